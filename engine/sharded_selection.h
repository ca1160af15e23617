// The global selection of a latent-sharded SAE (Gao et al., section D.1): every shard offers its
// best candidates, the candidates' values are all-gathered, and every shard keeps those of its
// own candidates that made the global cut. Per token for TopK (the top k of each row), over the
// batch for BatchTopK (the top k * B of the whole batch).
//
// Only values travel: a candidate is identified by (shard, slot), and every shard of a replica
// sees the same gathered tensor, so every shard computes the same cut without the indices.
// Ties are broken deterministically: the lower shard first, then the lower slot (the local
// order).
//
// Capacity overflow: a shard offers its best `offered` candidates and, when it had more, also
// the value of the next one (the "extra" column). A selection was possibly truncated when a
// shard's last offered candidate made the cut, and truncated when the extra value would have
// made it: the first is the classic estimate, the second exact.
#pragma once

#include <torch/types.h>

#include <cstdint>

#include "engine/sae_types.h"

namespace saegrid {

// k_in = min(ceil(capacity_factor * k / shards), k), or k in exact mode; never more than the
// candidates a shard has (`available`: its latents per token, or its batch entries).
int64_t CandidatesPerShard(int64_t k, int64_t shards, int64_t available, double capacity_factor,
                           bool exact);

struct GlobalCut {
  torch::Tensor keep;                // [..., offered] bool: this shard's candidates in the cut
  torch::Tensor possibly_truncated;  // [...] bool
  torch::Tensor truncated;           // [...] bool
};

// `gathered` [S, B, w]: every shard's candidate values per token, each shard's sorted
// descending; -inf marks an empty slot (never kept). With `has_extra`, the last column is each
// shard's next value (not a candidate) and offered = w - 1; else offered = w and nothing is
// reported truncated. Keeps the top `k` per token.
GlobalCut CutGlobalTopK(const torch::Tensor& gathered, int64_t shard, int64_t k, bool has_extra);

// The same over a whole batch: `gathered` [S, w], each shard's best values of its [B, n/S]
// pre-activations, sorted descending; keeps the top `take` of all of them. The truncation flags
// are 0-d (the batch's cut).
GlobalCut CutGlobalBatchTopK(const torch::Tensor& gathered, int64_t shard, int64_t take, bool has_extra);

// The fractions of tokens of `x` (normalised inputs) whose per-token top-`k` selection would be
// possibly truncated and truncated if `weights` (the whole model) were split into `shards`
// offering `k_in` candidates each.
struct OverflowRates {
  double possibly_truncated = 0;
  double truncated = 0;
};
OverflowRates ShardedOverflowRate(const torch::Tensor& x, const SaeParameters& weights, int64_t shards,
                                  int64_t k_in, int64_t k);

}  // namespace saegrid
