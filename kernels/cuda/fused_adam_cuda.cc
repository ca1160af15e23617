// Torch glue of the CUDA fused Adam pass (fused_adam_kernels.cu): checks, the float32 constants
// computed on the host exactly as the CPU kernel computes them, and the squared norm summed on the
// device (per-row partials, then a fixed-order sum), so that nothing waits for the GPU.
#include "kernels/cuda/fused_adam_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "kernels/cuda/fused_adam_kernels.cuh"

namespace saegrid::kernels::cuda {
namespace {

void CheckOperand(const torch::Tensor& t, const torch::Tensor& param, int64_t elements,
                  const char* name) {
  TORCH_CHECK(t.defined() && t.scalar_type() == torch::kFloat && t.is_contiguous(),
              "saegrid CUDA FusedAdamStep: ", name, " must be contiguous float32");
  TORCH_CHECK(t.device() == param.device(), "saegrid CUDA FusedAdamStep: ", name, " is on ",
              t.device(), ", the parameter on ", param.device());
  TORCH_CHECK(t.numel() >= elements, "saegrid CUDA FusedAdamStep: ", name, " has ", t.numel(),
              " elements, fewer than ", elements);
}

int64_t Elements(int64_t rows, int64_t width) {
  TORCH_CHECK(rows >= 0 && width >= 0, "saegrid CUDA FusedAdamStep: bad row shape ", rows, " x ",
              width);
  return rows * width;
}

// As kernels/cpu/fused_adam_cpu.cc: double arithmetic, then float32 constants.
AdamCoefficients CoefficientsFor(const AdamHyperparameters& hyper) {
  const double bias1 = 1 - std::pow(hyper.beta1, static_cast<double>(hyper.step));
  const double bias2_sqrt = std::sqrt(1 - std::pow(hyper.beta2, static_cast<double>(hyper.step)));
  AdamCoefficients c;
  c.b1 = static_cast<float>(hyper.beta1);
  c.b2 = static_cast<float>(hyper.beta2);
  c.one_minus_b1 = static_cast<float>(1 - hyper.beta1);
  c.one_minus_b2 = static_cast<float>(1 - hyper.beta2);
  c.inv_bias2_sqrt = static_cast<float>(1 / bias2_sqrt);
  c.eps = static_cast<float>(hyper.eps);
  c.step_size = static_cast<float>(hyper.lr / bias1);
  c.scale = static_cast<float>(hyper.grad_scale);
  return c;
}

// The 0-d float64 sum of `row_norm_sq` [rows], on its device.
torch::Tensor Total(const torch::Tensor& row_norm_sq, cudaStream_t stream) {
  const int64_t n = row_norm_sq.numel();
  auto total = torch::empty({}, row_norm_sq.options());
  const int64_t partial_count = SumScratchElements(n);
  torch::Tensor partials;
  if (partial_count > 0) partials = torch::empty({partial_count}, row_norm_sq.options());
  C10_CUDA_CHECK(LaunchSumDoubles(row_norm_sq.data_ptr<double>(), n,
                                  partial_count > 0 ? partials.data_ptr<double>() : nullptr,
                                  total.data_ptr<double>(), stream));
  return total;
}

}  // namespace

torch::Tensor FusedAdamStep(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& exp_avg,
                            torch::Tensor& exp_avg_sq, int64_t rows, int64_t width,
                            const AdamHyperparameters& hyper, bool unit_norm_rows) {
  const c10::cuda::CUDAGuard guard(param.device());
  const int64_t elements = Elements(rows, width);
  CheckOperand(param, param, elements, "the parameter");
  const auto g = grad.contiguous();
  CheckOperand(g, param, elements, "the gradient");
  CheckOperand(exp_avg, param, elements, "exp_avg");
  CheckOperand(exp_avg_sq, param, elements, "exp_avg_sq");
  TORCH_CHECK(hyper.step >= 1, "saegrid CUDA FusedAdamStep: step counts from 1, got ", hyper.step);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto row_norm_sq = torch::empty({rows}, param.options().dtype(torch::kDouble));
  C10_CUDA_CHECK(LaunchFusedAdamStep(param.data_ptr<float>(), g.data_ptr<float>(),
                                     exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(), rows,
                                     width, CoefficientsFor(hyper), unit_norm_rows,
                                     row_norm_sq.data_ptr<double>(), stream));
  return Total(row_norm_sq, stream);
}

torch::Tensor FusedGradientSquaredNorm(const torch::Tensor& param, const torch::Tensor& grad,
                                       int64_t rows, int64_t width, bool unit_norm_rows) {
  const c10::cuda::CUDAGuard guard(param.device());
  const int64_t elements = Elements(rows, width);
  CheckOperand(param, param, elements, "the parameter");
  const auto g = grad.contiguous();
  CheckOperand(g, param, elements, "the gradient");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto row_norm_sq = torch::empty({rows}, param.options().dtype(torch::kDouble));
  C10_CUDA_CHECK(LaunchFusedGradientSquaredNorm(param.data_ptr<float>(), g.data_ptr<float>(), rows,
                                                width, unit_norm_rows,
                                                row_norm_sq.data_ptr<double>(), stream));
  return Total(row_norm_sq, stream);
}

}  // namespace saegrid::kernels::cuda
