// The fused Adam pass on CUDA: one block per row, so that a row's projection coefficient and its
// new norm are block reductions (fixed order, no atomics) and the whole update of a row happens
// while the row is in registers. The element arithmetic is the CPU kernel's, written in the same
// order with IEEE division and square root; only the order of the reductions differs.
#include "kernels/cuda/fused_adam_kernels.cuh"

#include <algorithm>

#include "kernels/cuda/device_utils.cuh"

namespace saegrid::kernels::cuda {
namespace {

using device::kWarp;

constexpr int kThreads = 256;
// The clamps of the CPU kernel (SaeModel's reference projection and renormalisation).
constexpr float kMinSquaredNorm = 1e-12f * 1e-12f;
constexpr float kMinNorm = 1e-12f;
// Vectors per thread held in registers: up to 8 x 256 threads x 4 = 8192 elements per row.
constexpr int kMaxItems = 8;

template <int VEC>
__device__ __forceinline__ void Load(const float* p, float (&out)[VEC]) {
  if constexpr (VEC == 4) {
    device::Elem<float>::Load4(p, out);
  } else {
    out[0] = *p;
  }
}

template <int VEC>
__device__ __forceinline__ void Store(float* p, const float (&in)[VEC]) {
  if constexpr (VEC == 4) {
    device::Elem<float>::Store4(p, in);
  } else {
    *p = in[0];
  }
}

// One element of the CPU's UpdateRow.
__device__ __forceinline__ void UpdateElement(float& w, float g, float& m, float& v, float along,
                                              const AdamCoefficients& k, float& used_sq,
                                              float& new_norm_sq) {
  const float projected = g - along * w;
  used_sq += projected * projected;
  const float gc = projected * k.scale;
  m = k.b1 * m + k.one_minus_b1 * gc;
  v = k.b2 * v + k.one_minus_b2 * gc * gc;
  const float denom = sqrtf(v) * k.inv_bias2_sqrt + k.eps;
  w -= k.step_size * m / denom;
  new_norm_sq += w * w;
}

// <g, w> / max(|w|^2, 1e-24) from per-thread partial sums.
__device__ __forceinline__ float Along(float dot, float norm_sq, float* scratch) {
  device::BlockSum2(dot, norm_sq, scratch);
  return dot / fmaxf(norm_sq, kMinSquaredNorm);
}

// ITEMS > 0: thread t holds vectors t, t + blockDim.x, ... of the row (ITEMS of them) in
// registers; ITEMS == 0: the row is too long for that and each pass streams it.
template <int VEC, int ITEMS>
__global__ void __launch_bounds__(kThreads)
    FusedAdamKernel(float* __restrict__ param, const float* __restrict__ grad,
                    float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq, int64_t width,
                    AdamCoefficients k, bool unit_norm_rows, double* __restrict__ row_norm_sq) {
  __shared__ float scratch[2 * kWarp];
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * width;
  float* w = param + offset;
  const float* g = grad + offset;
  float* m = exp_avg + offset;
  float* v = exp_avg_sq + offset;
  const int64_t first = static_cast<int64_t>(threadIdx.x) * VEC;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * VEC;
  float along = 0.0f, used_sq = 0.0f, new_norm_sq = 0.0f;
  if constexpr (ITEMS > 0) {
    float wr[ITEMS][VEC], gr[ITEMS][VEC];
#pragma unroll
    for (int it = 0; it < ITEMS; ++it) {
      const int64_t c = first + it * stride;
      if (c < width) {
        Load<VEC>(w + c, wr[it]);
        Load<VEC>(g + c, gr[it]);
      } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) wr[it][i] = gr[it][i] = 0.0f;
      }
    }
    if (unit_norm_rows) {
      float dot = 0.0f, norm_sq = 0.0f;
#pragma unroll
      for (int it = 0; it < ITEMS; ++it) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          dot += gr[it][i] * wr[it][i];
          norm_sq += wr[it][i] * wr[it][i];
        }
      }
      along = Along(dot, norm_sq, scratch);
    }
#pragma unroll
    for (int it = 0; it < ITEMS; ++it) {
      const int64_t c = first + it * stride;
      if (c >= width) continue;
      float mr[VEC], vr[VEC];
      Load<VEC>(m + c, mr);
      Load<VEC>(v + c, vr);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        UpdateElement(wr[it][i], gr[it][i], mr[i], vr[i], along, k, used_sq, new_norm_sq);
      }
      Store<VEC>(m + c, mr);
      Store<VEC>(v + c, vr);
      if (!unit_norm_rows) Store<VEC>(w + c, wr[it]);
    }
    device::BlockSum2(used_sq, new_norm_sq, scratch);
    if (unit_norm_rows) {
      const float inv = 1.0f / fmaxf(sqrtf(new_norm_sq), kMinNorm);
#pragma unroll
      for (int it = 0; it < ITEMS; ++it) {
        const int64_t c = first + it * stride;
        if (c >= width) continue;
#pragma unroll
        for (int i = 0; i < VEC; ++i) wr[it][i] *= inv;
        Store<VEC>(w + c, wr[it]);
      }
    }
  } else {
    if (unit_norm_rows) {
      float dot = 0.0f, norm_sq = 0.0f;
      for (int64_t c = first; c < width; c += stride) {
        float wr[VEC], gr[VEC];
        Load<VEC>(w + c, wr);
        Load<VEC>(g + c, gr);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          dot += gr[i] * wr[i];
          norm_sq += wr[i] * wr[i];
        }
      }
      along = Along(dot, norm_sq, scratch);
    }
    for (int64_t c = first; c < width; c += stride) {
      float wr[VEC], gr[VEC], mr[VEC], vr[VEC];
      Load<VEC>(w + c, wr);
      Load<VEC>(g + c, gr);
      Load<VEC>(m + c, mr);
      Load<VEC>(v + c, vr);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        UpdateElement(wr[i], gr[i], mr[i], vr[i], along, k, used_sq, new_norm_sq);
      }
      Store<VEC>(m + c, mr);
      Store<VEC>(v + c, vr);
      Store<VEC>(w + c, wr);
    }
    device::BlockSum2(used_sq, new_norm_sq, scratch);
    if (unit_norm_rows) {
      // Each thread rescales the elements it wrote itself: no synchronisation needed.
      const float inv = 1.0f / fmaxf(sqrtf(new_norm_sq), kMinNorm);
      for (int64_t c = first; c < width; c += stride) {
        float wr[VEC];
        Load<VEC>(w + c, wr);
#pragma unroll
        for (int i = 0; i < VEC; ++i) wr[i] *= inv;
        Store<VEC>(w + c, wr);
      }
    }
  }
  if (threadIdx.x == 0) row_norm_sq[blockIdx.x] = used_sq;
}

template <int VEC, int ITEMS>
__global__ void __launch_bounds__(kThreads)
    GradientSquaredNormKernel(const float* __restrict__ param, const float* __restrict__ grad,
                              int64_t width, bool unit_norm_rows,
                              double* __restrict__ row_norm_sq) {
  __shared__ float scratch[2 * kWarp];
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * width;
  const float* w = param + offset;
  const float* g = grad + offset;
  const int64_t first = static_cast<int64_t>(threadIdx.x) * VEC;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * VEC;
  float along = 0.0f, sq = 0.0f, unused = 0.0f;
  if constexpr (ITEMS > 0) {
    float wr[ITEMS][VEC], gr[ITEMS][VEC];
#pragma unroll
    for (int it = 0; it < ITEMS; ++it) {
      const int64_t c = first + it * stride;
      if (c < width) {
        Load<VEC>(w + c, wr[it]);
        Load<VEC>(g + c, gr[it]);
      } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) wr[it][i] = gr[it][i] = 0.0f;
      }
    }
    if (unit_norm_rows) {
      float dot = 0.0f, norm_sq = 0.0f;
#pragma unroll
      for (int it = 0; it < ITEMS; ++it) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          dot += gr[it][i] * wr[it][i];
          norm_sq += wr[it][i] * wr[it][i];
        }
      }
      along = Along(dot, norm_sq, scratch);
    }
#pragma unroll
    for (int it = 0; it < ITEMS; ++it) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float projected = gr[it][i] - along * wr[it][i];
        sq += projected * projected;
      }
    }
  } else {
    if (unit_norm_rows) {
      float dot = 0.0f, norm_sq = 0.0f;
      for (int64_t c = first; c < width; c += stride) {
        float wr[VEC], gr[VEC];
        Load<VEC>(w + c, wr);
        Load<VEC>(g + c, gr);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          dot += gr[i] * wr[i];
          norm_sq += wr[i] * wr[i];
        }
      }
      along = Along(dot, norm_sq, scratch);
    }
    for (int64_t c = first; c < width; c += stride) {
      float wr[VEC], gr[VEC];
      Load<VEC>(w + c, wr);
      Load<VEC>(g + c, gr);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float projected = gr[i] - along * wr[i];
        sq += projected * projected;
      }
    }
  }
  device::BlockSum2(sq, unused, scratch);
  if (threadIdx.x == 0) row_norm_sq[blockIdx.x] = sq;
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The block shape for rows of `width`: threads (a multiple of 32, at most 256), the vector
// width and the vectors per thread held in registers (0: streamed).
struct RowLaunch {
  int threads, vec, items;
};

RowLaunch LaunchFor(int64_t width, bool vec4) {
  RowLaunch l;
  l.vec = vec4 ? 4 : 1;
  const int64_t vectors = (width + l.vec - 1) / l.vec;
  l.threads = static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(1, (vectors + kWarp - 1) / kWarp) * kWarp));
  const int64_t per_thread = (vectors + l.threads - 1) / l.threads;
  l.items = 0;
  for (int items = 1; items <= kMaxItems; items *= 2) {
    if (per_thread <= items) {
      l.items = items;
      break;
    }
  }
  return l;
}

// Instantiates `KERNEL<vec, items>` for the launch `l` (the row kernels' shared dispatch).
#define SAEGRID_ROW_KERNEL_DISPATCH(KERNEL, l, grid, stream, ...)                             \
  do {                                                                                      \
    const dim3 block_(l.threads);                                                           \
    if (l.vec == 4) {                                                                       \
      switch (l.items) {                                                                    \
        case 1: KERNEL<4, 1><<<grid, block_, 0, stream>>>(__VA_ARGS__); break;              \
        case 2: KERNEL<4, 2><<<grid, block_, 0, stream>>>(__VA_ARGS__); break;              \
        case 4: KERNEL<4, 4><<<grid, block_, 0, stream>>>(__VA_ARGS__); break;              \
        case 8: KERNEL<4, 8><<<grid, block_, 0, stream>>>(__VA_ARGS__); break;              \
        default: KERNEL<4, 0><<<grid, block_, 0, stream>>>(__VA_ARGS__); break;             \
      }                                                                                     \
    } else {                                                                                \
      switch (l.items) {                                                                    \
        case 1: KERNEL<1, 1><<<grid, block_, 0, stream>>>(__VA_ARGS__); break;              \
        case 2: KERNEL<1, 2><<<grid, block_, 0, stream>>>(__VA_ARGS__); break;              \
        case 4: KERNEL<1, 4><<<grid, block_, 0, stream>>>(__VA_ARGS__); break;              \
        case 8: KERNEL<1, 8><<<grid, block_, 0, stream>>>(__VA_ARGS__); break;              \
        default: KERNEL<1, 0><<<grid, block_, 0, stream>>>(__VA_ARGS__); break;             \
      }                                                                                     \
    }                                                                                       \
  } while (false)

constexpr int64_t kMaxGrid = 0x7FFFFFFF;

// Sum of in[begin, end) for block b's slice of `per_block` elements, in a fixed order.
__global__ void __launch_bounds__(kThreads)
    SumDoublesKernel(const double* __restrict__ in, int64_t n, int64_t per_block,
                     double* __restrict__ out) {
  __shared__ double scratch[2 * kWarp];
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * per_block;
  const int64_t end = min(n, begin + per_block);
  double sum = 0.0, unused = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) sum += in[i];
  device::BlockSum2(sum, unused, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = sum;
}

constexpr int64_t kSumPerBlock = 16384;
constexpr int64_t kMaxPartials = 1024;

}  // namespace

cudaError_t LaunchFusedAdamStep(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                                int64_t rows, int64_t width, const AdamCoefficients& coefficients,
                                bool unit_norm_rows, double* row_norm_sq, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (rows > kMaxGrid) return cudaErrorInvalidConfiguration;
  const bool vec4 = width % 4 == 0 && Aligned16(param) && Aligned16(grad) && Aligned16(exp_avg) &&
                    Aligned16(exp_avg_sq);
  const RowLaunch l = LaunchFor(width, vec4);
  const dim3 grid(static_cast<unsigned>(rows));
  SAEGRID_ROW_KERNEL_DISPATCH(FusedAdamKernel, l, grid, stream, param, grad, exp_avg, exp_avg_sq,
                              width, coefficients, unit_norm_rows, row_norm_sq);
  return cudaGetLastError();
}

cudaError_t LaunchFusedGradientSquaredNorm(const float* param, const float* grad, int64_t rows,
                                           int64_t width, bool unit_norm_rows,
                                           double* row_norm_sq, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (rows > kMaxGrid) return cudaErrorInvalidConfiguration;
  const bool vec4 = width % 4 == 0 && Aligned16(param) && Aligned16(grad);
  const RowLaunch l = LaunchFor(width, vec4);
  const dim3 grid(static_cast<unsigned>(rows));
  SAEGRID_ROW_KERNEL_DISPATCH(GradientSquaredNormKernel, l, grid, stream, param, grad, width,
                              unit_norm_rows, row_norm_sq);
  return cudaGetLastError();
}

int64_t SumScratchElements(int64_t n) {
  const int64_t blocks = std::min(kMaxPartials, (n + kSumPerBlock - 1) / kSumPerBlock);
  return blocks > 1 ? blocks : 0;
}

cudaError_t LaunchSumDoubles(const double* in, int64_t n, double* partials, double* total,
                             cudaStream_t stream) {
  const int64_t blocks = SumScratchElements(n);
  if (blocks == 0) {
    SumDoublesKernel<<<1, kThreads, 0, stream>>>(in, n, n, total);
    return cudaGetLastError();
  }
  const int64_t per_block = (n + blocks - 1) / blocks;
  SumDoublesKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(in, n, per_block,
                                                                           partials);
  SumDoublesKernel<<<1, kThreads, 0, stream>>>(partials, blocks, blocks, total);
  return cudaGetLastError();
}

}  // namespace saegrid::kernels::cuda
