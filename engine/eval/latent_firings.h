// Where each latent fires on held-out sequences, and what that says about it: the per-latent
// token statistics of seed 000 (E.7, the effective number of tokens) and seed 004 (the entropy of
// the token distribution), and the top-activating examples a person or an explanation tool reads.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/eval/spliced_sae.h"
#include "nlohmann/json.hpp"

namespace saegrid {

// Every (latent, position) with a positive activation at a kept position of `ids`.
struct LatentFirings {
  torch::Tensor ids;         // [S, T] int64: the sequences read
  torch::Tensor kept;        // [S, T] bool: positions the SAE read (not an excluded id)
  int64_t num_latents = 0;
  int64_t vocab = 0;
  torch::Tensor latent;      // [M] int64
  torch::Tensor row;         // [M] int64: sequence * T + position
  torch::Tensor activation;  // [M] float32 > 0
  int64_t kept_tokens() const;
};

// Runs the model and the SAE over `ids` [S, T] (CPU), `batch` sequences at a time.
absl::StatusOr<LatentFirings> CollectLatentFirings(const SplicedSae& spliced, const torch::Tensor& ids,
                                                   int64_t batch = 8);

// A_{i,v}: latent i's mean squared activation over the kept positions holding token v (zeros
// counted); p_i = A_i / sum_v A_{i,v}. entropy_i = -sum_v p log p (nats); effective tokens
// exp(entropy_i): k for a latent that fires equally on k tokens. Latents that never fired have
// neither (NaN) and are left out of the summaries.
struct TokenStatistics {
  torch::Tensor entropy;           // [n] float64
  torch::Tensor effective_tokens;  // [n] float64
  int64_t latents_fired = 0;
  double mean_entropy = 0;
  double mean_effective_tokens = 0;
  double median_effective_tokens = 0;
  // How many fired latents have effective tokens in [1, 2), [2, 4), [4, 8), ... (powers of two).
  std::vector<int64_t> effective_tokens_histogram;
};
TokenStatistics ComputeTokenStatistics(const LatentFirings& firings);

struct LatentExample {
  int64_t sequence = 0;
  int64_t position = 0;
  float activation = 0;
};
// Per latent, its `per_latent` highest firings, highest first (a latent that never fired: none).
std::vector<std::vector<LatentExample>> TopActivations(const LatentFirings& firings, int64_t per_latent);

// The top-activating examples file (docs/evaluations.md: format "saegrid.top_examples.v1"): per
// latent that fired, its firing density, statistics and examples, each the token ids of a window
// around the firing, the latent's activation at every token of the window, and the firing's index
// in it. `first_sequence` numbers the sequences as in the token file. `stats` may be null.
nlohmann::json TopExamplesJson(const LatentFirings& firings, const std::vector<std::vector<LatentExample>>& top,
                               const TokenStatistics* stats, int64_t context_before, int64_t context_after,
                               int64_t first_sequence);

}  // namespace saegrid
