#include "kernels/fused_adam.h"

#include <c10/util/Exception.h>

#include "kernels/cpu/fused_adam_cpu.h"

namespace saegrid::kernels {
namespace {

// 1-D parameters are processed in rows of this many elements so that they split across threads.
constexpr int64_t kFlatRow = 4096;

void CheckOperand(const torch::Tensor& t, const torch::Tensor& param, const char* name) {
  TORCH_CHECK(t.defined() && t.sizes() == param.sizes(), "FusedAdamStep: ", name, " must have the shape ",
              param.sizes(), " of the parameter");
  TORCH_CHECK(t.scalar_type() == torch::kFloat && t.is_contiguous(), "FusedAdamStep: ", name,
              " must be contiguous float32");
  TORCH_CHECK(t.device().is_cpu(), "FusedAdamStep: no implementation for device ", t.device(),
              " in this build");
}

// (rows, width) of the row view the kernel walks.
std::pair<int64_t, int64_t> RowShape(const torch::Tensor& param, bool unit_norm_rows) {
  if (unit_norm_rows) {
    TORCH_CHECK(param.dim() == 2, "FusedAdamStep: unit-norm rows need a 2-D parameter, got ",
                param.sizes());
    return {param.size(0), param.size(1)};
  }
  if (param.dim() == 2) return {param.size(0), param.size(1)};
  // A flat tensor in rows of kFlatRow; the tail row is handled by a second call.
  return {param.numel() / kFlatRow, kFlatRow};
}

}  // namespace

double FusedAdamStep(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& exp_avg,
                     torch::Tensor& exp_avg_sq, const AdamHyperparameters& hyper,
                     bool unit_norm_rows) {
  CheckOperand(param, param, "the parameter");
  const auto g = grad.contiguous();
  CheckOperand(g, param, "the gradient");
  CheckOperand(exp_avg, param, "exp_avg");
  CheckOperand(exp_avg_sq, param, "exp_avg_sq");
  TORCH_CHECK(hyper.step >= 1, "FusedAdamStep: step counts from 1, got ", hyper.step);
  const auto [rows, width] = RowShape(param, unit_norm_rows);
  float* p = param.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  double total = cpu::FusedAdamStep(p, gp, m, v, rows, width, hyper, unit_norm_rows);
  const int64_t done = rows * width, tail = param.numel() - done;
  if (tail > 0) {
    total += cpu::FusedAdamStep(p + done, gp + done, m + done, v + done, 1, tail, hyper, false);
  }
  return total;
}

double FusedGradientSquaredNorm(const torch::Tensor& param, const torch::Tensor& grad,
                                bool unit_norm_rows) {
  CheckOperand(param, param, "the parameter");
  const auto g = grad.contiguous();
  CheckOperand(g, param, "the gradient");
  const auto [rows, width] = RowShape(param, unit_norm_rows);
  const float* p = param.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  double total = cpu::FusedGradientSquaredNorm(p, gp, rows, width, unit_norm_rows);
  const int64_t done = rows * width, tail = param.numel() - done;
  if (tail > 0) total += cpu::FusedGradientSquaredNorm(p + done, gp + done, 1, tail, false);
  return total;
}

}  // namespace saegrid::kernels
