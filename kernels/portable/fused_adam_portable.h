// Portable implementation behind kernels/fused_adam.h: the same update as tensor operations
// (several passes over the parameter instead of one, on any device). Operands as in
// kernels/cuda/fused_adam_cuda.h: the first rows * width elements, viewed as [rows, width].
// Returns the squared gradient norm as a 0-d float64 tensor on the parameter's device.
#pragma once

#include <torch/types.h>

#include <cstdint>

#include "kernels/fused_adam.h"

namespace saegrid::kernels::portable {

torch::Tensor FusedAdamStep(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& exp_avg,
                            torch::Tensor& exp_avg_sq, int64_t rows, int64_t width,
                            const AdamHyperparameters& hyper, bool unit_norm_rows);

torch::Tensor FusedGradientSquaredNorm(const torch::Tensor& param, const torch::Tensor& grad,
                                       int64_t rows, int64_t width, bool unit_norm_rows);

}  // namespace saegrid::kernels::portable
