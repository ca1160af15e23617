#include "engine/eval/spliced_sae.h"

#include <torch/torch.h>

#include "engine/lm/token_file.h"

namespace saegrid {
namespace {
constexpr double kLayerNormEps = 1e-5;  // as SaeModel::NormalizeInputs
}  // namespace

SplicedSae::SplicedSae(const LanguageModel& model, const Hookpoint& hook, const ModelConfig& config,
                       const SaeParameters& params, std::vector<int64_t> excluded_ids, torch::Device device)
    : model_(model),
      hook_(hook),
      sae_(SaeModel::ForInference(config)),
      params_(params),
      excluded_ids_(std::move(excluded_ids)),
      device_(device) {}

absl::StatusOr<torch::Tensor> SplicedSae::Activations(const torch::Tensor& ids) const {
  auto out = model_.Forward(ids.to(device_, torch::kLong), {hook_});
  if (!out.ok()) return out.status();
  return (*out)[0];
}

absl::StatusOr<torch::Tensor> SplicedSae::Logits(const torch::Tensor& ids, const HookEdit* edit) const {
  torch::Tensor logits;
  auto out = model_.Forward(ids.to(device_, torch::kLong), {}, &logits, edit);
  if (!out.ok()) return out.status();
  return logits;
}

torch::Tensor SplicedSae::KeptPositions(const torch::Tensor& ids) const {
  return ExcludedPositionMask(ids.to(torch::kCPU, torch::kLong), excluded_ids_).logical_not();
}

Selection SplicedSae::Encode(const torch::Tensor& raw) const {
  return sae_.Encode(sae_.NormalizeInputs(raw), params_);
}

void SplicedSae::RawScale(const torch::Tensor& raw, torch::Tensor* scale, torch::Tensor* shift) const {
  const ModelConfig& c = sae_.config();
  if (c.normalize_inputs == InputNormalization::kLayerNorm) {
    *shift = raw.mean(-1, true);
    *scale = (raw - *shift).pow(2).mean(-1, true).sqrt() + kLayerNormEps;
  } else {
    const double s = c.normalize_inputs == InputNormalization::kDatasetConstant ? 1.0 / c.input_scale : 1.0;
    *scale = torch::full({1}, s, raw.options());
    *shift = torch::zeros({1}, raw.options());
  }
}

torch::Tensor SplicedSae::Reconstruct(const torch::Tensor& raw) const {
  torch::NoGradGuard no_grad;
  const auto flat = raw.reshape({-1, raw.size(-1)});
  torch::Tensor scale, shift;
  RawScale(flat, &scale, &shift);
  const auto normalised = sae_.NormalizeInputs(flat);
  const auto x_hat = sae_.Decode(sae_.Encode(normalised, params_), params_);
  return (x_hat * scale + shift).view(raw.sizes());
}

torch::Tensor SplicedSae::LatentContribution(const torch::Tensor& raw, int64_t latent, double activation) const {
  torch::Tensor scale, shift;
  RawScale(raw.to(params_.w_dec.device()).view({1, -1}), &scale, &shift);
  return (params_.w_dec[latent] * activation * scale.view({-1})).view(raw.sizes());
}

}  // namespace saegrid
