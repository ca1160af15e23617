// Downstream loss (Gao et al. 2024, section 4.1): the language model's next-token cross-entropy
// on held-out sequences clean, with the hookpoint's activations replaced by the SAE's
// reconstruction, by zeros, and by their mean; loss recovered; and the KL divergence of the
// spliced model's next-token distribution from the clean one.
//
// Positions holding an excluded id (BOS) are neither edited nor scored, as they were not trained
// on. The prediction at position t (of token t+1) is scored when t is kept, for t < T - 1.
#pragma once

#include <torch/types.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "engine/eval/spliced_sae.h"

namespace saegrid {

struct DownstreamLoss {
  int64_t sequences = 0;
  int64_t positions = 0;        // predictions scored
  double ce_clean = 0;          // nats per token
  double ce_sae = 0;            // the SAE's reconstruction spliced in
  double ce_zero_ablation = 0;  // the activations set to 0
  double ce_mean_ablation = 0;  // set to their mean over the kept positions of the sequences
  // (CE_zero - CE_sae) / (CE_zero - CE_clean): 1 for an exact SAE, 0 for one no better than
  // zeroing the layer. NaN when zero ablation does not change the loss.
  double loss_recovered = 0;
  double loss_recovered_mean_ablation = 0;  // the same with mean ablation as the floor
  double kl_sae = 0;            // mean KL(clean || spliced), nats
  double kl_zero_ablation = 0;  // mean KL(clean || zero-ablated): the scale kl_sae is read against
};

// Runs the model over `ids` [S, T] (int64, CPU) in batches of `batch` sequences: one pass for the
// mean activation, then four per batch (clean, spliced, zero, mean). Errors: the model's.
absl::StatusOr<DownstreamLoss> MeasureDownstreamLoss(const SplicedSae& spliced, const torch::Tensor& ids,
                                                     int64_t batch = 8);

// (ce_floor - ce_sae) / (ce_floor - ce_clean), NaN when the floor equals the clean loss.
double LossRecovered(double ce_clean, double ce_sae, double ce_floor);

}  // namespace saegrid
