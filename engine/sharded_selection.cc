#include "engine/sharded_selection.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace saegrid {

int64_t CandidatesPerShard(int64_t k, int64_t shards, int64_t latents_per_shard,
                           double capacity_factor, bool exact) {
  int64_t k_in = k;
  if (!exact && shards > 1) {
    k_in = std::min<int64_t>(static_cast<int64_t>(std::ceil(capacity_factor * k / shards - 1e-9)), k);
  }
  return std::max<int64_t>(1, std::min(k_in, latents_per_shard));
}

GlobalCut CutGlobalTopK(const torch::Tensor& gathered, int64_t shard, int64_t k, bool can_overflow) {
  torch::NoGradGuard no_grad;
  const int64_t shards = gathered.size(0), batch = gathered.size(1), k_in = gathered.size(2);
  // Shard-major order along dim 1, so that a stable descending sort prefers the lower shard.
  const auto values = gathered.permute({1, 0, 2}).reshape({batch, shards * k_in});
  const auto order = std::get<1>(values.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
  const int64_t take = std::min(k, shards * k_in);
  const auto flags = gathered.options().dtype(torch::kBool);
  auto keep_all = torch::zeros({batch, shards * k_in}, flags);
  keep_all.scatter_(1, order.narrow(1, 0, take), true);
  keep_all.logical_and_(torch::isfinite(values));
  GlobalCut cut;
  const auto per_shard = keep_all.view({batch, shards, k_in});
  cut.keep = per_shard.select(1, shard).clone();
  cut.overflow = can_overflow ? per_shard.select(2, k_in - 1).any(1) : torch::zeros({batch}, flags);
  return cut;
}

double ShardedOverflowRate(const torch::Tensor& x, const SaeParameters& weights, int64_t shards,
                           int64_t k_in, int64_t k) {
  torch::NoGradGuard no_grad;
  const int64_t n = weights.w_enc.size(0), rows = x.size(0);
  const bool can_overflow = k_in < std::min(k, n / shards);
  if (!can_overflow || rows == 0) return 0;
  int64_t overflowed = 0;
  constexpr int64_t kChunk = 4096;  // bounds the [chunk, n] pre-activations
  for (int64_t begin = 0; begin < rows; begin += kChunk) {
    const auto chunk = x.narrow(0, begin, std::min(kChunk, rows - begin));
    const auto pre = torch::addmm(weights.b_enc, chunk - weights.b_pre, weights.w_enc.t());
    const auto candidates = std::get<0>(pre.view({chunk.size(0), shards, n / shards}).topk(k_in, 2, true, true));
    const auto gathered = candidates.permute({1, 0, 2}).contiguous();  // [S, B, k_in]
    overflowed += CutGlobalTopK(gathered, 0, k, true).overflow.sum().item<int64_t>();
  }
  return static_cast<double>(overflowed) / static_cast<double>(rows);
}

}  // namespace saegrid
