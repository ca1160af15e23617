#include "kernels/fused_adam.h"

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include "kernels/cpu/fused_adam_cpu.h"
#include "kernels/dispatch.h"
#include "kernels/portable/fused_adam_portable.h"
#if defined(SAEGRID_WITH_CUDA_KERNELS)
#include "kernels/cuda/fused_adam_cuda.h"
#endif

namespace saegrid::kernels {
namespace {

// 1-D parameters are processed in rows of this many elements so that they split across threads.
constexpr int64_t kFlatRow = 4096;

void CheckOperand(const torch::Tensor& t, const torch::Tensor& param, const char* name) {
  TORCH_CHECK(t.defined() && t.sizes() == param.sizes(), "FusedAdamStep: ", name, " must have the shape ",
              param.sizes(), " of the parameter");
  TORCH_CHECK(t.scalar_type() == torch::kFloat && t.is_contiguous(), "FusedAdamStep: ", name,
              " must be contiguous float32");
  TORCH_CHECK(t.device() == param.device(), "FusedAdamStep: ", name, " is on ", t.device(),
              " but the parameter on ", param.device());
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

torch::Tensor HostScalar(double value) { return torch::scalar_tensor(value, torch::kDouble); }

// The tensor-level implementations (CUDA, portable) share one signature.
using DeviceStep = torch::Tensor (*)(torch::Tensor&, const torch::Tensor&, torch::Tensor&, torch::Tensor&,
                                     int64_t, int64_t, const AdamHyperparameters&, bool);
using DeviceNorm = torch::Tensor (*)(const torch::Tensor&, const torch::Tensor&, int64_t, int64_t, bool);

DeviceStep DeviceStepFor(Implementation implementation) {
#if defined(SAEGRID_WITH_CUDA_KERNELS)
  if (implementation == Implementation::kCuda) return &cuda::FusedAdamStep;
#endif
  return &portable::FusedAdamStep;
}

DeviceNorm DeviceNormFor(Implementation implementation) {
#if defined(SAEGRID_WITH_CUDA_KERNELS)
  if (implementation == Implementation::kCuda) return &cuda::FusedGradientSquaredNorm;
#endif
  return &portable::FusedGradientSquaredNorm;
}

torch::Tensor Tail(const torch::Tensor& t, int64_t done) {
  return t.view({-1}).narrow(0, done, t.numel() - done);
}

// The update of the first rows * width elements, then of the tail past them (as one row).
torch::Tensor Update(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& m, torch::Tensor& v,
                     int64_t rows, int64_t width, const AdamHyperparameters& hyper, bool unit_norm_rows) {
  const int64_t done = rows * width, tail = param.numel() - done;
  const Implementation implementation = ImplementationFor(param.device());
  if (implementation == Implementation::kCpu) {
    float* p = param.data_ptr<float>();
    const float* gp = grad.data_ptr<float>();
    float* mp = m.data_ptr<float>();
    float* vp = v.data_ptr<float>();
    double total = cpu::FusedAdamStep(p, gp, mp, vp, rows, width, hyper, unit_norm_rows);
    if (tail > 0) total += cpu::FusedAdamStep(p + done, gp + done, mp + done, vp + done, 1, tail, hyper, false);
    return HostScalar(total);
  }
  const DeviceStep step = DeviceStepFor(implementation);
  auto total = step(param, grad, m, v, rows, width, hyper, unit_norm_rows);
  if (tail > 0) {
    auto p = Tail(param, done), mt = Tail(m, done), vt = Tail(v, done);
    total = total + step(p, Tail(grad, done), mt, vt, 1, tail, hyper, false);
  }
  return total;
}

torch::Tensor SquaredNorm(const torch::Tensor& param, const torch::Tensor& grad, int64_t rows,
                          int64_t width, bool unit_norm_rows) {
  const int64_t done = rows * width, tail = param.numel() - done;
  const Implementation implementation = ImplementationFor(param.device());
  if (implementation == Implementation::kCpu) {
    const float* p = param.data_ptr<float>();
    const float* gp = grad.data_ptr<float>();
    double total = cpu::FusedGradientSquaredNorm(p, gp, rows, width, unit_norm_rows);
    if (tail > 0) total += cpu::FusedGradientSquaredNorm(p + done, gp + done, 1, tail, false);
    return HostScalar(total);
  }
  const DeviceNorm norm = DeviceNormFor(implementation);
  auto total = norm(param, grad, rows, width, unit_norm_rows);
  if (tail > 0) total = total + norm(Tail(param, done), Tail(grad, done), 1, tail, false);
  return total;
}

}  // namespace

torch::Tensor FusedAdamStep(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& exp_avg,
                            torch::Tensor& exp_avg_sq, const AdamHyperparameters& hyper,
                            bool unit_norm_rows) {
  CheckOperand(param, param, "the parameter");
  const auto g = grad.contiguous();
  CheckOperand(g, param, "the gradient");
  CheckOperand(exp_avg, param, "exp_avg");
  CheckOperand(exp_avg_sq, param, "exp_avg_sq");
  TORCH_CHECK(hyper.step >= 1, "FusedAdamStep: step counts from 1, got ", hyper.step);
  const auto [rows, width] = RowShape(param, unit_norm_rows);
  return Update(param, g, exp_avg, exp_avg_sq, rows, width, hyper, unit_norm_rows);
}

torch::Tensor FusedGradientSquaredNorm(const torch::Tensor& param, const torch::Tensor& grad,
                                       bool unit_norm_rows) {
  CheckOperand(param, param, "the parameter");
  const auto g = grad.contiguous();
  CheckOperand(g, param, "the gradient");
  const auto [rows, width] = RowShape(param, unit_norm_rows);
  return SquaredNorm(param, g, rows, width, unit_norm_rows);
}

}  // namespace saegrid::kernels
