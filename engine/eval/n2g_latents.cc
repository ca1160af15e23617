#include "engine/eval/n2g_latents.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

#include "base/status_macros.h"
#include "engine/eval/n2g.h"

namespace saegrid {
namespace {

// Tokens the wildcard and position checks substitute: the commonest tokens of the text read.
constexpr int64_t kReplacementTokens = 3;
constexpr int64_t kFillerTokens = 4;

std::vector<int64_t> CommonestTokens(const LatentFirings& f, int64_t count) {
  const auto kept_ids = f.ids.reshape({-1}).index({f.kept.reshape({-1})});
  const auto counts = torch::bincount(kept_ids, {}, f.vocab);
  const auto top = std::get<1>(counts.topk(std::min<int64_t>(count, f.vocab)));
  return std::vector<int64_t>(top.data_ptr<int64_t>(), top.data_ptr<int64_t>() + top.numel());
}

// The latent's activation at the last token of each context, contexts of equal length run
// together, `batch` at a time.
absl::StatusOr<std::vector<double>> ActivationAtLastToken(const SplicedSae& spliced, int64_t latent,
                                                          const std::vector<std::vector<int64_t>>& contexts,
                                                          int64_t batch) {
  std::vector<double> out(contexts.size(), 0.0);
  // A context longer than the model reads (the position check puts filler before a whole
  // sequence) keeps its last max_context tokens: all the model could see of it.
  const int64_t max_context = spliced.model().max_context();
  auto length_of = [&](const std::vector<int64_t>& c) {
    return max_context > 0 ? std::min<size_t>(c.size(), static_cast<size_t>(max_context)) : c.size();
  };
  std::map<size_t, std::vector<size_t>> by_length;
  for (size_t i = 0; i < contexts.size(); ++i) by_length[length_of(contexts[i])].push_back(i);
  batch = std::max<int64_t>(batch, 1);
  for (const auto& [length, members] : by_length) {
    for (size_t begin = 0; begin < members.size(); begin += batch) {
      const size_t end = std::min(members.size(), begin + static_cast<size_t>(batch));
      auto ids = torch::empty({static_cast<int64_t>(end - begin), static_cast<int64_t>(length)}, torch::kLong);
      for (size_t j = begin; j < end; ++j) {
        const auto& c = contexts[members[j]];
        std::copy(c.end() - static_cast<std::ptrdiff_t>(length), c.end(), ids.data_ptr<int64_t>() + (j - begin) * length);
      }
      SAEGRID_ASSIGN_OR_RETURN(const auto acts, spliced.Activations(ids));
      const auto last = acts.select(1, static_cast<int64_t>(length) - 1);
      const auto code = spliced.Encode(last);
      const auto value = (code.indices == latent).to(code.values.scalar_type()).mul(code.values).sum(1).cpu();
      for (size_t j = begin; j < end; ++j) out[members[j]] = value[static_cast<int64_t>(j - begin)].item<double>();
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<N2GSummary> MeasureN2G(const SplicedSae& spliced, const LatentFirings& firings,
                                      const N2GRunOptions& options) {
  torch::NoGradGuard no_grad;
  N2GSummary out;
  const int64_t s = firings.ids.size(0), t = firings.ids.size(1);
  const auto top = TopActivations(firings, 2 * options.examples);
  std::vector<int64_t> candidates;
  for (size_t i = 0; i < top.size(); ++i) {
    if (top[i].size() >= 2) candidates.push_back(static_cast<int64_t>(i));
  }
  auto gen = at::detail::createCPUGenerator(options.seed);
  const auto order = torch::randperm(static_cast<int64_t>(candidates.size()), gen, torch::kLong);
  const int64_t take = std::min<int64_t>(options.latents, static_cast<int64_t>(candidates.size()));
  N2GOptions build;
  build.max_train_examples = options.examples;
  build.replacement_tokens = CommonestTokens(firings, kReplacementTokens);
  build.filler_tokens = CommonestTokens(firings, kFillerTokens);
  const auto ids = firings.ids.accessor<int64_t, 2>();
  auto sequence = [&](int64_t row, int64_t length) {
    return std::vector<int64_t>(&ids[row][0], &ids[row][0] + length);
  };
  // Each latent's activation at every row where it fired.
  std::unordered_map<int64_t, std::unordered_map<int64_t, float>> fired_at;
  const auto latent_a = firings.latent.accessor<int64_t, 1>();
  const auto row_a = firings.row.accessor<int64_t, 1>();
  const auto act_a = firings.activation.accessor<float, 1>();
  std::set<int64_t> sampled;
  for (int64_t i = 0; i < take; ++i) sampled.insert(candidates[order[i].item<int64_t>()]);
  for (int64_t i = 0; i < firings.latent.size(0); ++i) {
    if (sampled.count(latent_a[i])) fired_at[latent_a[i]][row_a[i]] = act_a[i];
  }
  int64_t with_precision = 0, with_recall = 0, with_f1 = 0;
  for (int64_t i = 0; i < take; ++i) {
    const int64_t latent = candidates[order[i].item<int64_t>()];
    const auto& examples = top[static_cast<size_t>(latent)];
    // Alternate examples between building and scoring, so both halves span the same range. A
    // sequence that gave a building example is never scored (it would score the explanation on
    // its own source).
    std::vector<N2GExample> train;
    std::set<int64_t> train_sequences, test_sequences;
    for (size_t j = 0; j < examples.size(); j += 2) {
      train.push_back({sequence(examples[j].sequence, examples[j].position + 1), examples[j].activation});
      train_sequences.insert(examples[j].sequence);
    }
    for (size_t j = 1; j < examples.size(); j += 2) {
      if (!train_sequences.count(examples[j].sequence)) test_sequences.insert(examples[j].sequence);
    }
    const LatentActivationFn fn = [&](const std::vector<std::vector<int64_t>>& contexts) {
      return ActivationAtLastToken(spliced, latent, contexts, options.batch);
    };
    SAEGRID_ASSIGN_OR_RETURN(const auto explanation, BuildN2GExplanation(train, fn, build));
    // The random text: up to as many other held-out sequences, drawn without regard to the latent.
    const auto random = torch::randperm(s, gen, torch::kLong);
    std::set<int64_t> scored_set = test_sequences;
    int64_t added = 0;
    for (int64_t j = 0; j < s && added < options.examples; ++j) {
      const int64_t row = random[j].item<int64_t>();
      if (train_sequences.count(row) || !scored_set.insert(row).second) continue;
      ++added;
    }
    const std::vector<int64_t> scored(scored_set.begin(), scored_set.end());
    std::vector<std::vector<int64_t>> sequences;
    std::vector<std::vector<double>> activations;
    const auto& at = fired_at[latent];
    for (int64_t row : scored) {
      sequences.push_back(sequence(row, t));
      std::vector<double> a(static_cast<size_t>(t), 0.0);
      for (int64_t p = 0; p < t; ++p) {
        const auto it = at.find(row * t + p);
        if (it != at.end()) a[static_cast<size_t>(p)] = it->second;
      }
      activations.push_back(std::move(a));
    }
    SAEGRID_ASSIGN_OR_RETURN(const N2GScore score, ScoreN2G(explanation, sequences, activations));
    N2GSummary::Latent entry;
    entry.latent = latent;
    for (const auto& p : explanation.patterns) entry.patterns.push_back(N2GPatternToString(p));
    entry.precision = score.precision;
    entry.recall = score.recall;
    entry.f1 = score.f1;
    if (score.precision_defined()) {
      out.precision += score.precision;
      ++with_precision;
    }
    if (score.recall_defined()) {
      out.recall += score.recall;
      ++with_recall;
    }
    // F1 wherever the latent fired in the scored text: an explanation that predicts nothing there
    // scores 0, not "undefined".
    if (score.recall_defined()) {
      out.f1 += score.f1;
      ++with_f1;
    }
    out.per_latent.push_back(std::move(entry));
  }
  out.latents = take;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  out.precision = with_precision > 0 ? out.precision / with_precision : nan;
  out.recall = with_recall > 0 ? out.recall / with_recall : nan;
  out.f1 = with_f1 > 0 ? out.f1 / with_f1 : nan;
  return out;
}

}  // namespace saegrid
