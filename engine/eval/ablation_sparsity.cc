#include "engine/eval/ablation_sparsity.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace saegrid {
namespace {

double Median(std::vector<double> v) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// Mean and median of the finite values; their count.
void Summarise(const std::vector<double>& values, int64_t* count, double* mean, double* median) {
  std::vector<double> finite;
  for (double v : values) {
    if (std::isfinite(v)) finite.push_back(v);
  }
  *count = static_cast<int64_t>(finite.size());
  double sum = 0;
  for (double v : finite) sum += v;
  *mean = finite.empty() ? std::numeric_limits<double>::quiet_NaN() : sum / static_cast<double>(finite.size());
  *median = Median(finite);
}

}  // namespace

double LogitEffectSparsity(const torch::Tensor& differences) {
  const auto d = differences.to(torch::kDouble);
  // torch's median of an even count is the lower middle value; take the mean of the two middles.
  const auto sorted = std::get<0>(d.sort(-1));
  const int64_t v = d.size(-1);
  const auto median = v % 2 == 1 ? sorted.select(-1, v / 2)
                                 : 0.5 * (sorted.select(-1, v / 2 - 1) + sorted.select(-1, v / 2));
  const auto centred = d - median.unsqueeze(-1);
  const double l1 = centred.abs().sum().item<double>();
  const double l2sq = centred.pow(2).sum().item<double>();
  if (l2sq == 0) return std::numeric_limits<double>::quiet_NaN();
  return l1 * l1 / l2sq / static_cast<double>(d.numel());
}

absl::StatusOr<std::vector<double>> EditEffectSparsity(const SplicedSae& spliced, const torch::Tensor& ids,
                                                       const std::vector<PositionEdit>& edits, int64_t horizon,
                                                       int64_t batch) {
  torch::NoGradGuard no_grad;
  const auto all_ids = ids.to(torch::kCPU, torch::kLong);
  const int64_t t = all_ids.size(1);
  for (size_t i = 0; i < edits.size(); ++i) {
    const auto& e = edits[i];
    if (e.sequence < 0 || e.sequence >= all_ids.size(0) || e.position < 0 || e.position + horizon > t) {
      return absl::InvalidArgumentError(absl::StrCat("ablation edit ", i, ": position ", e.position, " of sequence ",
                                                     e.sequence, " leaves fewer than ", horizon, " positions"));
    }
  }
  std::vector<double> out;
  batch = std::max<int64_t>(batch, 1);
  for (size_t begin = 0; begin < edits.size(); begin += batch) {
    const size_t end = std::min(edits.size(), begin + static_cast<size_t>(batch));
    std::vector<int64_t> rows, positions;
    std::vector<torch::Tensor> deltas;
    for (size_t i = begin; i < end; ++i) {
      rows.push_back(edits[i].sequence);
      positions.push_back(edits[i].position);
      deltas.push_back(edits[i].delta.to(torch::kFloat).view({-1}));
    }
    const auto chunk = all_ids.index_select(0, torch::tensor(rows, torch::kLong));
    SAEGRID_ASSIGN_OR_RETURN(const auto clean, spliced.Logits(chunk));
    const auto batch_rows = torch::arange(static_cast<int64_t>(rows.size()), torch::kLong);
    const auto at = torch::tensor(positions, torch::kLong);
    const auto delta = torch::stack(deltas);
    const HookEdit edit{spliced.hook(), [&](const torch::Tensor& x) {
                          auto edited = x.clone();
                          const auto r = batch_rows.to(x.device()), p = at.to(x.device());
                          edited.index_put_({r, p}, edited.index({r, p}) + delta.to(x.device()));
                          return edited;
                        }};
    SAEGRID_ASSIGN_OR_RETURN(const auto edited, spliced.Logits(chunk, &edit));
    for (size_t j = 0; j < rows.size(); ++j) {
      const auto diff = (edited[j] - clean[j]).narrow(0, positions[j], horizon);
      out.push_back(LogitEffectSparsity(diff));
    }
  }
  return out;
}

absl::StatusOr<AblationSparsity> MeasureAblationSparsity(const SplicedSae& spliced, const torch::Tensor& ids,
                                                         const AblationSparsityOptions& options) {
  torch::NoGradGuard no_grad;
  AblationSparsity out;
  out.horizon = options.horizon;
  out.vocab = spliced.model().vocab_size();
  const auto all_ids = ids.to(torch::kCPU, torch::kLong);
  const int64_t s = all_ids.size(0), t = all_ids.size(1);
  if (options.horizon < 1 || options.horizon > t) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation.language_model.ablation_horizon: ", options.horizon,
                                                   " must be in [1, context_length ", t, "]"));
  }
  // Every (latent, sequence, position) firing at a kept position with the horizon inside the
  // sequence, with its activation and the raw activation it was read from.
  struct Firing {
    int64_t sequence, position;
    double activation;
  };
  std::map<int64_t, std::vector<Firing>> firings;
  std::vector<torch::Tensor> raw_rows(static_cast<size_t>(s));
  const int64_t batch = std::max<int64_t>(options.batch, 1);
  for (int64_t b = 0; b < s; b += batch) {
    const int64_t n = std::min(batch, s - b);
    const auto chunk = all_ids.narrow(0, b, n);
    SAEGRID_ASSIGN_OR_RETURN(const auto acts, spliced.Activations(chunk));
    const auto raw = acts.to(torch::kCPU);
    const auto kept = spliced.KeptPositions(chunk);
    const auto code = spliced.Encode(raw.reshape({n * t, -1}).to(spliced.params().w_dec.device()));
    const auto idx = code.indices.to(torch::kCPU), val = code.values.to(torch::kCPU);
    const auto idx_a = idx.accessor<int64_t, 2>();
    const auto val_a = val.accessor<float, 2>();
    const auto kept_a = kept.accessor<bool, 2>();
    for (int64_t row = 0; row < n * t; ++row) {
      const int64_t seq = row / t, pos = row % t;
      if (!kept_a[seq][pos] || pos + options.horizon > t) continue;
      for (int64_t j = 0; j < idx.size(1); ++j) {
        if (val_a[row][j] > 0) firings[idx_a[row][j]].push_back({b + seq, pos, val_a[row][j]});
      }
    }
    for (int64_t i = 0; i < n; ++i) raw_rows[b + i] = raw[i];
  }
  auto gen = at::detail::createCPUGenerator(options.seed);
  std::vector<int64_t> candidates;
  for (const auto& [latent, list] : firings) candidates.push_back(latent);
  const auto order = torch::randperm(static_cast<int64_t>(candidates.size()), gen, torch::kLong);
  const int64_t d = spliced.params().w_dec.size(1);
  std::vector<PositionEdit> latent_edits, coordinate_edits;
  const int64_t take = std::min<int64_t>(options.latents, static_cast<int64_t>(candidates.size()));
  for (int64_t i = 0; i < take; ++i) {
    const int64_t latent = candidates[order[i].item<int64_t>()];
    const auto& list = firings[latent];
    const auto picks = torch::randperm(static_cast<int64_t>(list.size()), gen, torch::kLong);
    const int64_t tokens = std::min<int64_t>(options.tokens_per_latent, static_cast<int64_t>(list.size()));
    for (int64_t j = 0; j < tokens; ++j) {
      const Firing& f = list[picks[j].item<int64_t>()];
      const auto raw = raw_rows[f.sequence][f.position];
      latent_edits.push_back({f.sequence, f.position, -spliced.LatentContribution(raw, latent, f.activation).cpu()});
      // The baseline: one coordinate of the same activation set to zero.
      const int64_t coordinate = torch::randint(d, {1}, gen, torch::kLong).item<int64_t>();
      auto delta = torch::zeros({d}, torch::kFloat);
      delta[coordinate] = -raw[coordinate];
      coordinate_edits.push_back({f.sequence, f.position, delta});
    }
  }
  out.latents = take;
  SAEGRID_ASSIGN_OR_RETURN(const auto latent_values,
                           EditEffectSparsity(spliced, all_ids, latent_edits, options.horizon, batch));
  SAEGRID_ASSIGN_OR_RETURN(const auto baseline_values,
                           EditEffectSparsity(spliced, all_ids, coordinate_edits, options.horizon, batch));
  Summarise(latent_values, &out.samples, &out.mean, &out.median);
  Summarise(baseline_values, &out.baseline_samples, &out.baseline_mean, &out.baseline_median);
  return out;
}

}  // namespace saegrid
