#include "kernels/portable/fused_adam_portable.h"

#include <torch/torch.h>

#include <cmath>

namespace saegrid::kernels::portable {
namespace {

// The clamps of the CPU kernel (and of SaeModel's reference projection and renormalisation).
constexpr double kMinSquaredNorm = 1e-24;
constexpr double kMinNorm = 1e-12;

// The first rows * width elements as [rows, width] (a view: updates land in the tensor).
torch::Tensor Rows(const torch::Tensor& t, int64_t rows, int64_t width) {
  return t.view({-1}).narrow(0, 0, rows * width).view({rows, width});
}

// The gradient as used: with unit_norm_rows, each row loses its component along the weight row.
torch::Tensor UsedGradient(const torch::Tensor& w, const torch::Tensor& g, bool unit_norm_rows) {
  if (!unit_norm_rows) return g;
  const auto along = (g * w).sum(1, true) / w.pow(2).sum(1, true).clamp_min(kMinSquaredNorm);
  return g - along * w;
}

}  // namespace

torch::Tensor FusedAdamStep(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& exp_avg,
                            torch::Tensor& exp_avg_sq, int64_t rows, int64_t width,
                            const AdamHyperparameters& hyper, bool unit_norm_rows) {
  torch::NoGradGuard no_grad;
  auto w = Rows(param, rows, width);
  auto m = Rows(exp_avg, rows, width);
  auto v = Rows(exp_avg_sq, rows, width);
  const auto used = UsedGradient(w, Rows(grad, rows, width), unit_norm_rows);
  auto squared_norm = used.to(torch::kDouble).pow(2).sum();
  const auto g = hyper.grad_scale == 1.0 ? used : used * hyper.grad_scale;
  const double bias1 = 1 - std::pow(hyper.beta1, static_cast<double>(hyper.step));
  const double bias2_sqrt = std::sqrt(1 - std::pow(hyper.beta2, static_cast<double>(hyper.step)));
  m.mul_(hyper.beta1).add_(g, 1 - hyper.beta1);
  v.mul_(hyper.beta2).addcmul_(g, g, 1 - hyper.beta2);
  const auto denom = (v.sqrt() / bias2_sqrt).add_(hyper.eps);
  w.addcdiv_(m, denom, -hyper.lr / bias1);
  if (unit_norm_rows) w.div_(w.norm(2, 1, true).clamp_min(kMinNorm));
  return squared_norm;
}

torch::Tensor FusedGradientSquaredNorm(const torch::Tensor& param, const torch::Tensor& grad,
                                       int64_t rows, int64_t width, bool unit_norm_rows) {
  torch::NoGradGuard no_grad;
  const auto used = UsedGradient(Rows(param, rows, width), Rows(grad, rows, width), unit_norm_rows);
  return used.to(torch::kDouble).pow(2).sum();
}

}  // namespace saegrid::kernels::portable
