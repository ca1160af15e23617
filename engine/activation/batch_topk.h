// BatchTopK (Bussmann et al.): the k * B largest pre-activations of the whole batch of B tokens
// are kept (then ReLU), so a token's count varies around k. Inference cannot see a batch: it
// keeps the pre-activations above one threshold, the moving average of the smallest kept
// activation of each training batch (ModelConfig::inference_threshold), and the SAE exports as a
// JumpReLU with that threshold for every latent.
//
// Sharded, each shard offers its best ceil(c * k * B / S) entries of its [B, n / S] block (plus
// the next value, to tell a real truncation), their values are all-gathered and every shard
// makes the same cut of the top k * B (engine/sharded_selection.h). A replica's batch is its own
// B / R rows.
#pragma once

#include "engine/activation/activation_function.h"

namespace saegrid {

class BatchTopK : public ActivationFunction {
 public:
  explicit BatchTopK(const ModelConfig& config) : ActivationFunction(config) {}

  absl::StatusOr<TrainingSelection> Select(const SelectionInputs& in) const override;
  std::pair<torch::Tensor, torch::Tensor> DenseActivations(const torch::Tensor& pre, const SaeParameters& params,
                                                           int64_t k) const override;
  bool UsesAuxK() const override { return true; }
  bool UsesK() const override { return true; }
  bool FitsInferenceThreshold() const override { return true; }
  // Above the fitted threshold; before there is one, the batch's own top k * B.
  Selection Encode(const torch::Tensor& x_centered, const SaeParameters& params) const override;
  ActivationExport Export(const SaeParameters& published, double input_scale) const override;
};

}  // namespace saegrid
