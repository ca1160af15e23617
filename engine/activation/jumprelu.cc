// JumpReLU (Rajamanoharan et al.): z = pre * H(pre - theta) with a trained threshold per latent,
// theta = exp(log_threshold). The step function has no useful gradient, so theta learns through
// the straight-through estimator with a rectangle kernel K of bandwidth eps:
//   d/dtheta JumpReLU(pre) := -(theta / eps) K((pre - theta) / eps)
//   d/dtheta H(pre - theta) := -(1 / eps) K((pre - theta) / eps),  K(u) = 1{|u| < 1/2},
// and the sparsity penalty is the L0 itself, l0_coefficient * mean per-token sum of H (or
// l0_coefficient * (L0 / target_l0 - 1)^2 towards a target).
//
// The sparse step selects every entry with pre > theta - eps / 2: the active ones and those just
// below the threshold whose kernel is nonzero. Outside that set both the activation and every
// pseudo-derivative are 0, so the selection loses nothing the dense computation would have.
// No cut across shards: each latent's threshold is its own.
#include <torch/torch.h>

#include <cmath>

#include "engine/activation/architectures.h"
#include "engine/activation/latent_collectors.h"
#include "engine/chunked_encoder.h"

namespace saegrid {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The rectangle kernel's support: |pre - theta| < eps / 2.
torch::Tensor InWindow(const torch::Tensor& pre, const torch::Tensor& theta, double bandwidth) {
  return ((pre - theta).abs() < bandwidth / 2).to(pre.scalar_type());
}

// pre * H(pre - theta), with the pseudo-derivative for theta. `theta` broadcasts against `pre`.
class JumpReLUFunction : public torch::autograd::Function<JumpReLUFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& pre, const torch::Tensor& theta,
                               double bandwidth) {
    ctx->save_for_backward({pre, theta});
    ctx->saved_data["bandwidth"] = bandwidth;
    return pre * (pre > theta).to(pre.scalar_type());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto& pre = saved[0];
    const auto& theta = saved[1];
    const double bandwidth = ctx->saved_data["bandwidth"].toDouble();
    const auto d_pre = grad[0] * (pre > theta).to(pre.scalar_type());
    const auto d_theta = (grad[0] * (-(theta / bandwidth)) * InWindow(pre, theta, bandwidth)).sum_to_size(theta.sizes());
    return {d_pre, d_theta, torch::Tensor()};
  }
};

// H(pre - theta), with the pseudo-derivative for theta (none for pre).
class StepFunction : public torch::autograd::Function<StepFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& pre, const torch::Tensor& theta,
                               double bandwidth) {
    ctx->save_for_backward({pre, theta});
    ctx->saved_data["bandwidth"] = bandwidth;
    return (pre > theta).to(pre.scalar_type());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto& pre = saved[0];
    const auto& theta = saved[1];
    const double bandwidth = ctx->saved_data["bandwidth"].toDouble();
    const auto d_theta = (grad[0] * (-1.0 / bandwidth) * InWindow(pre, theta, bandwidth)).sum_to_size(theta.sizes());
    return {torch::zeros_like(pre), d_theta, torch::Tensor()};
  }
};

class JumpReLU final : public ActivationFunction {
 public:
  explicit JumpReLU(const ModelConfig& config) : ActivationFunction(config) {}

  absl::StatusOr<TrainingSelection> Select(const SelectionInputs& in) const override {
    const auto& p = *in.params;
    torch::Tensor lower;
    {
      torch::NoGradGuard no_grad;
      lower = p.log_threshold.detach().exp() - config_.jumprelu_bandwidth / 2;
    }
    ThresholdCollector near(lower);
    RunChunkedEncoder(in.x_centered, p, ComputeDtype::kFloat32, config_.encoder_chunk_latents, in.profile, {&near});
    torch::NoGradGuard no_grad;
    TrainingSelection out;
    out.main = PackByRow(near.Finish(), in.x_centered.size(0));
    out.possibly_truncated = torch::zeros({}, in.x_centered.options().dtype(torch::kLong));
    out.truncated = out.possibly_truncated;
    return out;
  }

  torch::Tensor Activate(const torch::Tensor& pre, const torch::Tensor& indices,
                         const SaeParameters& params) const override {
    return JumpReLUFunction::apply(pre, Thresholds(indices, params), config_.jumprelu_bandwidth);
  }

  absl::StatusOr<torch::Tensor> Penalty(const torch::Tensor& pre, const torch::Tensor& acts,
                                          const torch::Tensor& indices, const SaeParameters& params,
                                          int64_t rows_total, Communicator* shards) const override {
    const auto l0_sum = StepFunction::apply(pre, Thresholds(indices, params), config_.jumprelu_bandwidth).sum();
    if (config_.target_l0 <= 0) return l0_sum * (config_.l0_coefficient / static_cast<double>(rows_total));
    // The squared distance to a target needs the L0 of every shard's latents: the total's value
    // with this shard's part's gradient (every shard computes the same penalty).
    auto total = l0_sum;
    if (shards != nullptr && shards->size() > 1) {
      auto summed = l0_sum.detach().clone().view({1});
      auto st = shards->AllReduce(summed, ReduceOp::kSum);
      if (!st.ok()) return st;
      total = summed[0] + (l0_sum - l0_sum.detach());
    }
    const auto relative = total / (static_cast<double>(rows_total) * config_.target_l0) - 1.0;
    (void)acts;
    return relative.pow(2) * config_.l0_coefficient;
  }

  double PenaltyValue(double, double l0_per_token) const override {
    if (config_.target_l0 <= 0) return config_.l0_coefficient * l0_per_token;
    const double relative = l0_per_token / config_.target_l0 - 1.0;
    return config_.l0_coefficient * relative * relative;
  }

  // The reference: the same estimator written as autograd expressions on the whole matrix (the
  // straight-through terms are zero-valued products whose gradient is the pseudo-derivative).
  std::pair<torch::Tensor, torch::Tensor> DenseActivations(const torch::Tensor& pre, const SaeParameters& params,
                                                           int64_t) const override {
    const double eps = config_.jumprelu_bandwidth;
    const auto theta = params.log_threshold.exp().unsqueeze(0);  // [1, n]
    const auto step = (pre.detach() > theta.detach()).to(pre.scalar_type());
    const auto window = ((pre.detach() - theta.detach()).abs() < eps / 2).to(pre.scalar_type());
    const auto theta_offset = theta - theta.detach();  // value 0, gradient 1
    const auto z = pre * step + theta_offset * (-(theta.detach() / eps) * window);
    const auto l0 = (step + theta_offset * (-window / eps)).sum();
    torch::Tensor penalty;
    if (config_.target_l0 <= 0) {
      penalty = l0 * (config_.l0_coefficient / static_cast<double>(pre.size(0)));
    } else {
      penalty = (l0 / (static_cast<double>(pre.size(0)) * config_.target_l0) - 1.0).pow(2) * config_.l0_coefficient;
    }
    return {z, penalty};
  }

  Selection Encode(const torch::Tensor& x_centered, const SaeParameters& params) const override {
    torch::NoGradGuard no_grad;
    ThresholdCollector above(params.log_threshold.exp());
    RunChunkedEncoder(x_centered, params, ComputeDtype::kFloat32, config_.encoder_chunk_latents, nullptr, {&above});
    Selection s = PackByRow(above.Finish(), x_centered.size(0));
    s.values = s.values * s.keep.to(torch::kFloat);
    return s;
  }

  ActivationExport Export(const SaeParameters& published, double input_scale) const override {
    return {"jumprelu", /*sparsify_loadable=*/false, published.log_threshold.detach().exp() / input_scale};
  }

 private:
  // theta at `indices` [B, W] (undefined: every latent, [n]).
  static torch::Tensor Thresholds(const torch::Tensor& indices, const SaeParameters& params) {
    const auto theta = params.log_threshold.exp();
    if (!indices.defined()) return theta;
    return theta.index_select(0, indices.flatten()).view_as(indices);
  }
};

}  // namespace

std::unique_ptr<ActivationFunction> MakeJumpReLU(const ModelConfig& config) {
  return std::make_unique<JumpReLU>(config);
}

}  // namespace saegrid
