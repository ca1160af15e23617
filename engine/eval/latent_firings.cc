#include "engine/eval/latent_firings.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>

#include "base/status_macros.h"

namespace saegrid {

int64_t LatentFirings::kept_tokens() const { return kept.defined() ? kept.sum().item<int64_t>() : 0; }

absl::StatusOr<LatentFirings> CollectLatentFirings(const SplicedSae& spliced, const torch::Tensor& ids,
                                                   int64_t batch) {
  torch::NoGradGuard no_grad;
  LatentFirings out;
  out.ids = ids.to(torch::kCPU, torch::kLong).contiguous();
  out.kept = spliced.KeptPositions(out.ids);
  out.num_latents = spliced.num_latents();
  out.vocab = spliced.model().vocab_size();
  const int64_t s = out.ids.size(0), t = out.ids.size(1);
  std::vector<torch::Tensor> latents, rows, values;
  batch = std::max<int64_t>(batch, 1);
  for (int64_t b = 0; b < s; b += batch) {
    const int64_t n = std::min(batch, s - b);
    SAEGRID_ASSIGN_OR_RETURN(const auto acts, spliced.Activations(out.ids.narrow(0, b, n)));
    const auto code = spliced.Encode(acts.reshape({n * t, -1}));
    const auto idx = code.indices.to(torch::kCPU), val = code.values.to(torch::kCPU).to(torch::kFloat);
    const auto row = (torch::arange(n * t, torch::kLong) + b * t).unsqueeze(1).expand_as(idx);
    const auto kept = out.kept.narrow(0, b, n).reshape({n * t, 1}).expand_as(idx);
    const auto fired = (val > 0).logical_and(kept);
    latents.push_back(idx.index({fired}));
    rows.push_back(row.index({fired}));
    values.push_back(val.index({fired}));
  }
  out.latent = latents.empty() ? torch::empty({0}, torch::kLong) : torch::cat(latents);
  out.row = rows.empty() ? torch::empty({0}, torch::kLong) : torch::cat(rows);
  out.activation = values.empty() ? torch::empty({0}, torch::kFloat) : torch::cat(values);
  return out;
}

TokenStatistics ComputeTokenStatistics(const LatentFirings& f) {
  torch::NoGradGuard no_grad;
  TokenStatistics out;
  const int64_t n = f.num_latents, v = f.vocab;
  const auto flat_ids = f.ids.reshape({-1});
  // How many kept positions hold each token: A's denominator.
  const auto token_count = torch::zeros({v}, torch::kDouble)
                               .index_add_(0, flat_ids.index({f.kept.reshape({-1})}),
                                           torch::ones({f.kept_tokens()}, torch::kDouble));
  const auto token = flat_ids.index_select(0, f.row);
  const auto key = f.latent * v + token;
  const auto [unique_keys, inverse] = torch::_unique(key, /*sorted=*/true, /*return_inverse=*/true);
  const auto sq = torch::zeros({unique_keys.size(0)}, torch::kDouble)
                      .index_add_(0, inverse, f.activation.to(torch::kDouble).pow(2));
  const auto key_latent = torch::div(unique_keys, v, "floor");
  const auto a = sq / token_count.index_select(0, unique_keys.remainder(v));
  const auto total = torch::zeros({n}, torch::kDouble).index_add_(0, key_latent, a);
  const auto p = a / total.index_select(0, key_latent);
  const auto plogp = torch::where(p > 0, p * p.log(), torch::zeros_like(p));
  const auto nan = std::numeric_limits<double>::quiet_NaN();
  const auto fired = total > 0;
  out.entropy = torch::where(fired, -torch::zeros({n}, torch::kDouble).index_add_(0, key_latent, plogp),
                             torch::full({n}, nan, torch::kDouble));
  out.effective_tokens = out.entropy.exp();
  out.latents_fired = fired.sum().item<int64_t>();
  if (out.latents_fired > 0) {
    const auto e = out.effective_tokens.index({fired});
    out.mean_entropy = out.entropy.index({fired}).mean().item<double>();
    out.mean_effective_tokens = e.mean().item<double>();
    auto sorted = std::get<0>(e.sort());
    const int64_t m = sorted.size(0);
    out.median_effective_tokens = m % 2 == 1 ? sorted[m / 2].item<double>()
                                             : 0.5 * (sorted[m / 2 - 1].item<double>() + sorted[m / 2].item<double>());
    const auto acc = e.accessor<double, 1>();
    for (int64_t i = 0; i < m; ++i) {
      // exp of an entropy over whole tokens is >= 1; rounding may put it a hair below.
      const auto bin = static_cast<size_t>(std::max(0.0, std::floor(std::log2(std::max(acc[i], 1.0)))));
      if (out.effective_tokens_histogram.size() <= bin) out.effective_tokens_histogram.resize(bin + 1, 0);
      ++out.effective_tokens_histogram[bin];
    }
  } else {
    out.mean_entropy = out.mean_effective_tokens = out.median_effective_tokens = nan;
  }
  return out;
}

std::vector<std::vector<LatentExample>> TopActivations(const LatentFirings& f, int64_t per_latent) {
  std::vector<std::vector<LatentExample>> out(static_cast<size_t>(f.num_latents));
  const int64_t m = f.latent.size(0), t = f.ids.size(1);
  const auto latent = f.latent.accessor<int64_t, 1>();
  const auto row = f.row.accessor<int64_t, 1>();
  const auto act = f.activation.accessor<float, 1>();
  std::vector<int64_t> order(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) order[i] = i;
  // By latent, then highest activation first; ties by position, so the order is deterministic.
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (latent[a] != latent[b]) return latent[a] < latent[b];
    if (act[a] != act[b]) return act[a] > act[b];
    return row[a] < row[b];
  });
  for (int64_t i : order) {
    auto& list = out[static_cast<size_t>(latent[i])];
    if (static_cast<int64_t>(list.size()) < per_latent) list.push_back({row[i] / t, row[i] % t, act[i]});
  }
  return out;
}

nlohmann::json TopExamplesJson(const LatentFirings& f, const std::vector<std::vector<LatentExample>>& top,
                               const TokenStatistics* stats, int64_t context_before, int64_t context_after,
                               int64_t first_sequence) {
  const int64_t t = f.ids.size(1);
  // (latent, row) -> activation, for the windows around each example.
  std::unordered_map<int64_t, float> value;
  const auto latent = f.latent.accessor<int64_t, 1>();
  const auto row = f.row.accessor<int64_t, 1>();
  const auto act = f.activation.accessor<float, 1>();
  const int64_t rows = f.ids.numel();
  for (int64_t i = 0; i < f.latent.size(0); ++i) value[latent[i] * rows + row[i]] = act[i];
  const auto counts = torch::bincount(f.latent, {}, f.num_latents);
  const double kept = static_cast<double>(std::max<int64_t>(f.kept_tokens(), 1));
  const auto ids = f.ids.accessor<int64_t, 2>();
  auto finite_or_null = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); };
  nlohmann::json latents = nlohmann::json::array();
  for (int64_t i = 0; i < f.num_latents; ++i) {
    const auto& examples = top[static_cast<size_t>(i)];
    if (examples.empty()) continue;
    nlohmann::json entry = {{"latent", i},
                            {"density", counts[i].item<int64_t>() / kept},
                            {"max_activation", examples.front().activation}};
    if (stats != nullptr) {
      entry["effective_tokens"] = finite_or_null(stats->effective_tokens[i].item<double>());
      entry["token_entropy"] = finite_or_null(stats->entropy[i].item<double>());
    }
    nlohmann::json list = nlohmann::json::array();
    for (const auto& e : examples) {
      const int64_t begin = std::max<int64_t>(0, e.position - context_before);
      const int64_t end = std::min<int64_t>(t, e.position + context_after + 1);
      std::vector<int64_t> tokens;
      std::vector<float> activations;
      for (int64_t p = begin; p < end; ++p) {
        tokens.push_back(ids[e.sequence][p]);
        const auto it = value.find(i * rows + e.sequence * t + p);
        activations.push_back(it == value.end() ? 0.0f : it->second);
      }
      list.push_back({{"sequence", first_sequence + e.sequence},
                      {"position", e.position},
                      {"activation", e.activation},
                      {"tokens", tokens},
                      {"activations", activations},
                      {"focus", e.position - begin}});
    }
    entry["examples"] = std::move(list);
    latents.push_back(std::move(entry));
  }
  return {{"format", "saegrid.top_examples.v1"},
          {"context_before", context_before},
          {"context_after", context_after},
          {"kept_tokens", f.kept_tokens()},
          {"latents", std::move(latents)}};
}

}  // namespace saegrid
