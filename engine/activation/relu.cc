// ReLU (the standard SAE of Bricken et al. and Cunningham et al.): every positive pre-activation
// is active, and an L1 penalty, l1_coefficient * mean per-token sum of activations, keeps few of
// them positive. The sparse step collects the positive entries chunk by chunk (never the B x n
// matrix) and pads them per token.
#include <torch/torch.h>

#include "engine/activation/architectures.h"
#include "engine/activation/latent_collectors.h"
#include "engine/chunked_encoder.h"

namespace saegrid {
namespace {

class ReLU final : public ActivationFunction {
 public:
  explicit ReLU(const ModelConfig& config) : ActivationFunction(config) {}

  absl::StatusOr<TrainingSelection> Select(const SelectionInputs& in) const override {
    TrainingSelection out;
    out.main = Positive(in.x_centered, *in.params, in.profile);
    out.possibly_truncated = torch::zeros({}, in.x_centered.options().dtype(torch::kLong));
    out.truncated = out.possibly_truncated;
    return out;
  }

  absl::StatusOr<torch::Tensor> Penalty(const torch::Tensor&, const torch::Tensor& acts, const torch::Tensor&,
                                        const SaeParameters&, int64_t rows_total, Communicator*) const override {
    return acts.sum() * (config_.l1_coefficient / static_cast<double>(rows_total));
  }

  double PenaltyValue(double l1_per_token, double) const override { return config_.l1_coefficient * l1_per_token; }

  std::pair<torch::Tensor, torch::Tensor> DenseActivations(const torch::Tensor& pre, const SaeParameters&,
                                                           int64_t) const override {
    const auto z = torch::relu(pre);
    return {z, z.sum() * (config_.l1_coefficient / static_cast<double>(pre.size(0)))};
  }

  Selection Encode(const torch::Tensor& x_centered, const SaeParameters& params) const override {
    Selection s = Positive(x_centered, params, nullptr);
    s.values = s.values * s.keep.to(torch::kFloat);
    return s;
  }

  ActivationExport Export(const SaeParameters&, double) const override {
    return {"standard", /*sparsify_loadable=*/false, torch::Tensor()};
  }

 private:
  Selection Positive(const torch::Tensor& x_centered, const SaeParameters& params, StepProfile* profile) const {
    torch::NoGradGuard no_grad;
    ThresholdCollector positive(torch::zeros({}, x_centered.options()));
    RunChunkedEncoder(x_centered, params, ComputeDtype::kFloat32, config_.encoder_chunk_latents, profile, {&positive});
    return PackByRow(positive.Finish(), x_centered.size(0));
  }
};

}  // namespace

std::unique_ptr<ActivationFunction> MakeReLU(const ModelConfig& config) { return std::make_unique<ReLU>(config); }

}  // namespace saegrid
