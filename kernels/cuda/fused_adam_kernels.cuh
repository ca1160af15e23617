// Raw launchers of the fused optimizer pass (kernels/fused_adam.h), free of LibTorch (see
// sparse_ops_kernels.cuh for why). Pointers are device pointers to `rows * width` contiguous
// float32 elements; launchers only enqueue work on `stream` and return the launch status.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace saegrid::kernels::cuda {

// Adam's per-element constants in float32, computed on the host exactly as the CPU kernel does
// (kernels/cpu/fused_adam_cpu.cc), so both round the same constants.
struct AdamCoefficients {
  float b1, b2, one_minus_b1, one_minus_b2, inv_bias2_sqrt, eps, step_size, scale;
};

// One block per row: with `unit_norm_rows`, the gradient row is projected orthogonally to the
// weight row (coefficient <g, w> / max(|w|^2, 1e-24)); then Adam updates the moments and the row,
// which is rescaled to unit norm (norm clamped at 1e-12). `row_norm_sq[r]` receives the squared
// norm of row r's gradient as used, before the scale. The gradient is not written. A row of up to
// 8192 elements (2048 when width % 4 != 0) is held in registers, so parameter and gradient are
// read once; a longer row is streamed (read again, from cache, by the later passes).
cudaError_t LaunchFusedAdamStep(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                                int64_t rows, int64_t width, const AdamCoefficients& coefficients,
                                bool unit_norm_rows, double* row_norm_sq, cudaStream_t stream);

// The row_norm_sq FusedAdamStep would write, without updating anything.
cudaError_t LaunchFusedGradientSquaredNorm(const float* param, const float* grad, int64_t rows,
                                           int64_t width, bool unit_norm_rows,
                                           double* row_norm_sq, cudaStream_t stream);

// *total = sum of in[0, n) in a fixed order (bitwise the same on every run), through `partials`
// of SumScratchElements(n) doubles (none when it returns 0).
int64_t SumScratchElements(int64_t n);
cudaError_t LaunchSumDoubles(const double* in, int64_t n, double* partials, double* total,
                             cudaStream_t stream);

}  // namespace saegrid::kernels::cuda
