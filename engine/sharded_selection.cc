#include "engine/sharded_selection.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace saegrid {
namespace {

// The cut of `values` [R, S * offered] (shard-major), keeping the top `take` finite values of each
// row: [R, S, offered] bool, and the smallest kept value of each row (-inf when none).
std::pair<torch::Tensor, torch::Tensor> Cut(const torch::Tensor& values, int64_t shards, int64_t offered,
                                            int64_t take) {
  const int64_t rows = values.size(0);
  // A stable descending sort prefers the lower shard, then the lower slot.
  auto [sorted, order] = values.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true);
  const int64_t kept = std::min(take, shards * offered);
  auto keep = torch::zeros({rows, shards * offered}, values.options().dtype(torch::kBool));
  keep.scatter_(1, order.narrow(1, 0, kept), true);
  keep.logical_and_(torch::isfinite(values));
  torch::Tensor last_kept;
  if (kept == 0) {
    last_kept = torch::full({rows}, -std::numeric_limits<float>::infinity(), values.options());
  } else {
    last_kept = sorted.select(1, kept - 1);
  }
  return {keep.view({rows, shards, offered}), last_kept};
}

}  // namespace

int64_t CandidatesPerShard(int64_t k, int64_t shards, int64_t available, double capacity_factor,
                           bool exact) {
  int64_t k_in = k;
  if (!exact && shards > 1) {
    k_in = std::min<int64_t>(static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(k) / shards - 1e-9)), k);
  }
  return std::max<int64_t>(1, std::min(k_in, available));
}

GlobalCut CutGlobalTopK(const torch::Tensor& gathered, int64_t shard, int64_t k, bool has_extra) {
  torch::NoGradGuard no_grad;
  const int64_t shards = gathered.size(0), batch = gathered.size(1);
  const int64_t offered = gathered.size(2) - (has_extra ? 1 : 0);
  const auto candidates = gathered.narrow(2, 0, offered);
  const auto values = candidates.permute({1, 0, 2}).reshape({batch, shards * offered});
  auto [keep, last_kept] = Cut(values, shards, offered, k);
  GlobalCut cut;
  cut.keep = keep.select(1, shard).clone();
  const auto flags = gathered.options().dtype(torch::kBool);
  if (!has_extra) {
    cut.possibly_truncated = torch::zeros({batch}, flags);
    cut.truncated = torch::zeros({batch}, flags);
    return cut;
  }
  cut.possibly_truncated = keep.select(2, offered - 1).any(1);
  // The next value of some shard beats the weakest kept one (or fills a slot left empty).
  const auto extra = gathered.select(2, offered).t();  // [B, S]
  const bool full = std::min(k, shards * offered) == k;
  const auto beats = full ? extra > last_kept.unsqueeze(1) : torch::isfinite(extra);
  cut.truncated = beats.any(1);
  return cut;
}

GlobalCut CutGlobalBatchTopK(const torch::Tensor& gathered, int64_t shard, int64_t take, bool has_extra) {
  torch::NoGradGuard no_grad;
  const int64_t shards = gathered.size(0);
  const int64_t offered = gathered.size(1) - (has_extra ? 1 : 0);
  const auto values = gathered.narrow(1, 0, offered).reshape({1, shards * offered});
  auto [keep, last_kept] = Cut(values, shards, offered, take);
  GlobalCut cut;
  cut.keep = keep[0].select(0, shard).clone();
  const auto flags = gathered.options().dtype(torch::kBool);
  if (!has_extra) {
    cut.possibly_truncated = torch::zeros({}, flags);
    cut.truncated = torch::zeros({}, flags);
    return cut;
  }
  cut.possibly_truncated = keep[0].select(1, offered - 1).any();
  const auto extra = gathered.select(1, offered);  // [S]
  const bool full = std::min(take, shards * offered) == take;
  cut.truncated = (full ? extra > last_kept[0] : torch::isfinite(extra)).any();
  return cut;
}

OverflowRates ShardedOverflowRate(const torch::Tensor& x, const SaeParameters& weights, int64_t shards,
                                  int64_t k_in, int64_t k) {
  torch::NoGradGuard no_grad;
  const int64_t n = weights.w_enc.size(0), rows = x.size(0);
  OverflowRates rates;
  if (k_in >= std::min(k, n / shards) || rows == 0) return rates;
  int64_t possibly = 0, truncated = 0;
  constexpr int64_t kChunk = 4096;  // bounds the [chunk, n] pre-activations
  for (int64_t begin = 0; begin < rows; begin += kChunk) {
    const auto chunk = x.narrow(0, begin, std::min(kChunk, rows - begin));
    const auto pre = torch::addmm(weights.b_enc, chunk - weights.b_pre, weights.w_enc.t());
    const auto candidates =
        std::get<0>(pre.view({chunk.size(0), shards, n / shards}).topk(k_in + 1, 2, true, true));
    const auto cut = CutGlobalTopK(candidates.permute({1, 0, 2}).contiguous(), 0, k, /*has_extra=*/true);
    possibly += cut.possibly_truncated.sum().item<int64_t>();
    truncated += cut.truncated.sum().item<int64_t>();
  }
  rates.possibly_truncated = static_cast<double>(possibly) / static_cast<double>(rows);
  rates.truncated = static_cast<double>(truncated) / static_cast<double>(rows);
  return rates;
}

}  // namespace saegrid
