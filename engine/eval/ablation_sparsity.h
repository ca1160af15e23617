// Ablation sparsity (Gao et al. 2024, section 4.5): how sparse a latent's effect on the model's
// output is. Ablate the latent at one token where it is active (subtract its contribution from
// the hookpoint's activation there), take the logit differences at that token and the T - 1
// following ones, subtract each position's median over the vocabulary, concatenate the V*T
// numbers and report (L1 / L2)^2 / (V*T): 1/(V*T) for an effect on one logit, 1 for an effect
// spread evenly. The baseline ablates one coordinate of the hookpoint's activation (sets it to
// zero) at the same tokens, in the same run.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/eval/spliced_sae.h"

namespace saegrid {

// (L1 / L2)^2 / numel of `differences` [T, V] after subtracting each row's median. NaN when the
// centred differences are all zero (the edit changed nothing measurable).
double LogitEffectSparsity(const torch::Tensor& differences);

// One edit of one sequence: `delta` [d] is added to the hookpoint's activation at `position`.
struct PositionEdit {
  int64_t sequence = 0;  // row of the ids the caller passes
  int64_t position = 0;
  torch::Tensor delta;
};

// The sparsity of each edit's effect on positions [position, position + horizon) (edits whose
// window runs past the sequence are an error). Batched: `batch` edits per forward pass.
absl::StatusOr<std::vector<double>> EditEffectSparsity(const SplicedSae& spliced, const torch::Tensor& ids,
                                                       const std::vector<PositionEdit>& edits, int64_t horizon,
                                                       int64_t batch = 8);

struct AblationSparsity {
  int64_t horizon = 16;
  int64_t vocab = 0;
  int64_t latents = 0;           // latents sampled (each active somewhere in the sequences)
  int64_t samples = 0;           // (latent, token) ablations with a measurable effect
  double mean = 0;               // over the samples: the latents' ablation sparsity
  double median = 0;
  int64_t baseline_samples = 0;
  double baseline_mean = 0;      // one hookpoint coordinate ablated at the same tokens
  double baseline_median = 0;
};

struct AblationSparsityOptions {
  int64_t latents = 16;
  int64_t tokens_per_latent = 4;
  int64_t horizon = 16;
  uint64_t seed = 0;
  int64_t batch = 8;
};

// Samples latents that fire at a kept position with `horizon` positions left in its sequence of
// `ids` [S, T], and up to tokens_per_latent such tokens each (seeded), and measures both.
absl::StatusOr<AblationSparsity> MeasureAblationSparsity(const SplicedSae& spliced, const torch::Tensor& ids,
                                                         const AblationSparsityOptions& options);

}  // namespace saegrid
