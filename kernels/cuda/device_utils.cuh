// Device helpers shared by the .cu files of kernels/cuda/ (never included by host-only code):
// bfloat16 bit conversions written out so that no LibTorch or cuda_bf16 type crosses the raw
// launchers, and a fixed-order block sum, so every reduction here gives the same bits on every run.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace saegrid::kernels::cuda::device {

constexpr int kWarp = 32;

// bfloat16 is the high half of a float32: widening is exact.
__device__ __forceinline__ float Bf16BitsToFloat(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

// Round to nearest even, NaN to the canonical quiet NaN: the rounding LibTorch's BFloat16 uses,
// so a bf16 result matches the CPU kernels bit for bit when the float32 values do.
__device__ __forceinline__ uint16_t FloatToBf16Bits(float value) {
  if (value != value) return 0x7FC0u;
  const uint32_t u = __float_as_uint(value);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// Element type of a row buffer: float32, or bfloat16 held as its 16 raw bits.
template <typename T>
struct Elem;

template <>
struct Elem<float> {
  __device__ __forceinline__ static float Load(const float* p) { return *p; }
  __device__ __forceinline__ static void Store(float* p, float v) { *p = v; }
  // Four consecutive elements; `p` is 16-byte aligned.
  __device__ __forceinline__ static void Load4(const float* p, float (&out)[4]) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    out[0] = q.x;
    out[1] = q.y;
    out[2] = q.z;
    out[3] = q.w;
  }
  __device__ __forceinline__ static void Store4(float* p, const float (&in)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
  }
};

template <>
struct Elem<uint16_t> {
  __device__ __forceinline__ static float Load(const uint16_t* p) { return Bf16BitsToFloat(*p); }
  __device__ __forceinline__ static void Store(uint16_t* p, float v) { *p = FloatToBf16Bits(v); }
  // Four consecutive elements; `p` is 8-byte aligned.
  __device__ __forceinline__ static void Load4(const uint16_t* p, float (&out)[4]) {
    const uint2 q = *reinterpret_cast<const uint2*>(p);
    out[0] = __uint_as_float(q.x << 16);
    out[1] = __uint_as_float(q.x & 0xFFFF0000u);
    out[2] = __uint_as_float(q.y << 16);
    out[3] = __uint_as_float(q.y & 0xFFFF0000u);
  }
  __device__ __forceinline__ static void Store4(uint16_t* p, const float (&in)[4]) {
    uint2 q;
    q.x = static_cast<uint32_t>(FloatToBf16Bits(in[0])) |
          (static_cast<uint32_t>(FloatToBf16Bits(in[1])) << 16);
    q.y = static_cast<uint32_t>(FloatToBf16Bits(in[2])) |
          (static_cast<uint32_t>(FloatToBf16Bits(in[3])) << 16);
    *reinterpret_cast<uint2*>(p) = q;
  }
};

template <typename T>
__device__ __forceinline__ T WarpSum(T value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
  }
  return value;
}

// Sums `a` and `b` over the block (blockDim.x a multiple of 32, at most 1024) in a fixed order;
// every thread gets both totals. `scratch` holds 2 * 32 values; the call synchronises the block
// and may be repeated with the same scratch.
template <typename T>
__device__ __forceinline__ void BlockSum2(T& a, T& b, T* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  a = WarpSum(a);
  b = WarpSum(b);
  __syncthreads();  // a previous call's readers are done with scratch
  if (lane == 0) {
    scratch[warp] = a;
    scratch[kWarp + warp] = b;
  }
  __syncthreads();
  T ta = lane < warps ? scratch[lane] : T(0);
  T tb = lane < warps ? scratch[kWarp + lane] : T(0);
  a = WarpSum(ta);
  b = WarpSum(tb);
}

}  // namespace saegrid::kernels::cuda::device
