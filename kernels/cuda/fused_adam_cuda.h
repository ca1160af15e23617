// CUDA implementation behind kernels/fused_adam.h (built only with a CUDA LibTorch): one thread
// block per row of `width` elements. Operands are validated float32, contiguous, on one device;
// the first `rows * width` elements are processed. Returns the squared norm of the gradient as
// used (projected for unit-norm rows), before grad_scale, as a 0-d float64 tensor on the device:
// reading it is the caller's choice of synchronisation.
#pragma once

#include <torch/types.h>

#include <cstdint>

#include "kernels/fused_adam.h"

namespace saegrid::kernels::cuda {

torch::Tensor FusedAdamStep(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& exp_avg,
                            torch::Tensor& exp_avg_sq, int64_t rows, int64_t width,
                            const AdamHyperparameters& hyper, bool unit_norm_rows);

torch::Tensor FusedGradientSquaredNorm(const torch::Tensor& param, const torch::Tensor& grad,
                                       int64_t rows, int64_t width, bool unit_norm_rows);

}  // namespace saegrid::kernels::cuda
