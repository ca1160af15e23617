// CPU implementation behind kernels/fused_adam.h. Inputs are validated, float32 and contiguous;
// `width` is the row length (the whole tensor is rows of `width` elements).
#pragma once

#include <cstdint>

#include "kernels/fused_adam.h"

namespace saegrid::kernels::cpu {

double FusedAdamStep(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                     int64_t rows, int64_t width, const AdamHyperparameters& hyper,
                     bool unit_norm_rows);

double FusedGradientSquaredNorm(const float* param, const float* grad, int64_t rows,
                                int64_t width, bool unit_norm_rows);

}  // namespace saegrid::kernels::cpu
