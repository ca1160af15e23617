// An SAE spliced into a language model at its hookpoint: what the model-based evaluations
// (downstream loss, ablation sparsity, latent statistics, N2G) share. The SAE reads the
// hookpoint's raw activations through its own input normalisation, and its reconstruction goes
// back to raw units before the model reads it, so a splice is exact for an exact SAE whatever the
// normalisation.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/lm/language_model.h"
#include "engine/sae_model.h"

namespace saegrid {

class SplicedSae {
 public:
  // `model` and `params` must outlive this object; `config` is the SAE's (input scale included).
  // `excluded_ids`: positions holding these ids were not trained on and are never edited.
  SplicedSae(const LanguageModel& model, const Hookpoint& hook, const ModelConfig& config,
             const SaeParameters& params, std::vector<int64_t> excluded_ids, torch::Device device);

  const LanguageModel& model() const { return model_; }
  const Hookpoint& hook() const { return hook_; }
  const SaeParameters& params() const { return params_; }
  const SaeModel& sae() const { return sae_; }
  int64_t num_latents() const { return params_.w_dec.size(0); }

  // The hookpoint's activations for `ids` [B, T] (any integer dtype, CPU): [B, T, d] float32.
  absl::StatusOr<torch::Tensor> Activations(const torch::Tensor& ids) const;
  // The logits [B, T, V] (on the model's device) with `edit` applied (null: the clean model).
  absl::StatusOr<torch::Tensor> Logits(const torch::Tensor& ids, const HookEdit* edit = nullptr) const;
  // [B, T] bool: positions the SAE may edit (not an excluded id).
  torch::Tensor KeptPositions(const torch::Tensor& ids) const;

  // The SAE's code of raw activation rows [N, d]: the selected latents and their activations.
  Selection Encode(const torch::Tensor& raw) const;
  // The reconstruction of raw rows [N, d], in raw units.
  torch::Tensor Reconstruct(const torch::Tensor& raw) const;
  // Latent `latent`'s contribution, activation * decoder row, in the raw units of the row `raw`
  // [d] it was read from (layer normalisation scales it by that row's standard deviation).
  torch::Tensor LatentContribution(const torch::Tensor& raw, int64_t latent, double activation) const;

 private:
  // Per-row factors that map the SAE's space back to raw units: raw = normalised * scale + shift.
  void RawScale(const torch::Tensor& raw, torch::Tensor* scale, torch::Tensor* shift) const;

  const LanguageModel& model_;
  Hookpoint hook_;
  SaeModel sae_;
  const SaeParameters& params_;
  std::vector<int64_t> excluded_ids_;
  torch::Device device_;
};

}  // namespace saegrid
