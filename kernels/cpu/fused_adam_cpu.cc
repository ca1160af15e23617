#include "kernels/cpu/fused_adam_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace saegrid::kernels::cpu {
namespace {

// The clamp of SaeModel's reference projection and renormalisation.
constexpr float kMinSquaredNorm = 1e-12f * 1e-12f;
constexpr float kMinNorm = 1e-12f;

// Rows per task: a task should move at least ~64 KiB.
int64_t Grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

// The factor of the row along which the gradient is projected out: <g, w> / |w|^2.
float ParallelCoefficient(const float* w, const float* g, int64_t width) {
  float dot = 0, norm_sq = 0;
  for (int64_t c = 0; c < width; ++c) {
    dot += g[c] * w[c];
    norm_sq += w[c] * w[c];
  }
  return dot / std::max(norm_sq, kMinSquaredNorm);
}

// Adam's per-element constants in float32.
struct RowCoefficients {
  float b1, b2, one_minus_b1, one_minus_b2, inv_bias2_sqrt, eps, step_size, scale;
};

// One row: projection (unit_norm_rows), scale, both moments, the update, renormalisation.
// Returns the squared norm of the projected, unscaled gradient. Compiled for AVX-512, AVX2 and
// the baseline, chosen at load by the CPU (the row is sqrt- and divide-bound, not memory-bound).
#if defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
float UpdateRow(float* w, const float* g, float* m, float* v, int64_t width,
                const RowCoefficients& k, bool unit_norm_rows) {
  const float along = unit_norm_rows ? ParallelCoefficient(w, g, width) : 0.0f;
  float used_sq = 0, new_norm_sq = 0;
  for (int64_t c = 0; c < width; ++c) {
    const float projected = g[c] - along * w[c];
    used_sq += projected * projected;
    const float gc = projected * k.scale;
    m[c] = k.b1 * m[c] + k.one_minus_b1 * gc;
    v[c] = k.b2 * v[c] + k.one_minus_b2 * gc * gc;
    const float denom = std::sqrt(v[c]) * k.inv_bias2_sqrt + k.eps;
    w[c] -= k.step_size * m[c] / denom;
    new_norm_sq += w[c] * w[c];
  }
  if (unit_norm_rows) {
    const float inv = 1.0f / std::max(std::sqrt(new_norm_sq), kMinNorm);
    for (int64_t c = 0; c < width; ++c) w[c] *= inv;
  }
  return used_sq;
}

// Sums per-row partials in a fixed order, so the result does not depend on the thread count.
double Total(const std::vector<double>& partial) {
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace

double FusedAdamStep(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                     int64_t rows, int64_t width, const AdamHyperparameters& hyper,
                     bool unit_norm_rows) {
  const double bias1 = 1 - std::pow(hyper.beta1, static_cast<double>(hyper.step));
  const double bias2_sqrt = std::sqrt(1 - std::pow(hyper.beta2, static_cast<double>(hyper.step)));
  RowCoefficients coefficients;
  coefficients.b1 = static_cast<float>(hyper.beta1);
  coefficients.b2 = static_cast<float>(hyper.beta2);
  coefficients.one_minus_b1 = static_cast<float>(1 - hyper.beta1);
  coefficients.one_minus_b2 = static_cast<float>(1 - hyper.beta2);
  coefficients.inv_bias2_sqrt = static_cast<float>(1 / bias2_sqrt);
  coefficients.eps = static_cast<float>(hyper.eps);
  coefficients.step_size = static_cast<float>(hyper.lr / bias1);
  coefficients.scale = static_cast<float>(hyper.grad_scale);
  std::vector<double> row_norm_sq(rows, 0.0);
  at::parallel_for(0, rows, Grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* w = param + r * width;
      const float* g = grad + r * width;
      float* m = exp_avg + r * width;
      float* v = exp_avg_sq + r * width;
      row_norm_sq[r] = UpdateRow(w, g, m, v, width, coefficients, unit_norm_rows);
    }
  });
  return Total(row_norm_sq);
}

double FusedGradientSquaredNorm(const float* param, const float* grad, int64_t rows,
                                int64_t width, bool unit_norm_rows) {
  std::vector<double> row_norm_sq(rows, 0.0);
  at::parallel_for(0, rows, Grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* w = param + r * width;
      const float* g = grad + r * width;
      const float along = unit_norm_rows ? ParallelCoefficient(w, g, width) : 0.0f;
      float sq = 0;
      for (int64_t c = 0; c < width; ++c) {
        const float projected = g[c] - along * w[c];
        sq += projected * projected;
      }
      row_norm_sq[r] = sq;
    }
  });
  return Total(row_norm_sq);
}

}  // namespace saegrid::kernels::cpu
