// The global top-k of a latent-sharded SAE (Gao et al., section D.1): every shard offers its
// local top k_in candidates per token, the candidates' values are all-gathered, and every shard
// keeps those of its own candidates that made the global top k.
//
// Only values travel: a candidate is identified by (shard, slot), and every shard of a replica
// sees the same gathered tensor, so every shard computes the same cut without the indices.
// Ties are broken deterministically: the lower shard first, then the lower slot (the local
// top-k's order).
#pragma once

#include <torch/types.h>

#include <cstdint>

#include "engine/sae_model.h"

namespace saegrid {

// k_in = min(ceil(capacity_factor * k / shards), k), or k in exact mode; never more than the
// latents a shard owns.
int64_t CandidatesPerShard(int64_t k, int64_t shards, int64_t latents_per_shard,
                           double capacity_factor, bool exact);

struct GlobalCut {
  torch::Tensor keep;      // [B, k_in] bool: this shard's candidates in the global top-k
  torch::Tensor overflow;  // [B] bool: the token's selection may have been truncated
};

// `gathered` [S, B, k_in]: every shard's candidate values, each shard's sorted descending; -inf
// marks an empty slot (never kept). Keeps the top `k` per token. A token overflows when, on some
// shard that could have offered more than k_in candidates (`can_overflow`), its lowest offered
// candidate survived the cut.
GlobalCut CutGlobalTopK(const torch::Tensor& gathered, int64_t shard, int64_t k, bool can_overflow);

// The fraction of tokens of `x` (normalised inputs) that would overflow if `weights` (the whole
// model) were split into `shards` offering `k_in` candidates each for a top-`k` selection.
double ShardedOverflowRate(const torch::Tensor& x, const SaeParameters& weights, int64_t shards,
                           int64_t k_in, int64_t k);

}  // namespace saegrid
