// The sparse kernels of the training step on CUDA. Each output row of the gathers is produced by
// one block row (tokens) or one warp (entries), reading the latent rows with 16-byte (float32) or
// 8-byte (bfloat16) vector loads; the transposed product either groups the entries by latent
// (deterministic: one writer per output element, in a fixed order) or adds with atomics.
//
// Sums that the CPU kernels do in a fixed order (DenseSparseMatmul, the grouped scatter, the
// per-latent sums) are done here in the same order with the same roundings (__fmul_rn /
// __fadd_rn keep nvcc from fusing them), so those results agree with the CPU bit for bit.
#include "kernels/cuda/sparse_ops_kernels.cuh"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>

#include "kernels/cuda/device_utils.cuh"

namespace saegrid::kernels::cuda {
namespace {

using device::Elem;
using device::kWarp;

constexpr int kThreads = 256;

// Threads along d for rows of `d` elements in vectors of `vec` (a multiple of 32, at most 256);
// the rest of a 256-thread block stacks further rows.
int ThreadsAlong(int64_t d, int vec) {
  const int64_t vectors = (d + vec - 1) / vec;
  const int64_t warps = std::max<int64_t>(1, (vectors + kWarp - 1) / kWarp);
  return static_cast<int>(std::min<int64_t>(kThreads, warps * kWarp));
}

bool Aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T, int VEC>
__device__ __forceinline__ void LoadVec(const T* p, float (&out)[VEC]) {
  if constexpr (VEC == 4) {
    Elem<T>::Load4(p, out);
  } else {
    out[0] = Elem<T>::Load(p);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void StoreVec(T* p, const float (&in)[VEC]) {
  if constexpr (VEC == 4) {
    Elem<T>::Store4(p, in);
  } else {
    Elem<T>::Store(p, in[0]);
  }
}

// ---------------------------------------------------------------------------------------------
// DenseSparseMatmul: token b is block row threadIdx.y of block blockIdx.x.

template <typename RowT, int VEC>
__global__ void __launch_bounds__(kThreads)
    DenseSparseMatmulKernel(const float* __restrict__ values, const int64_t* __restrict__ indices,
                            const RowT* __restrict__ rows, RowT* __restrict__ out, int64_t batch,
                            int64_t k, int64_t num_rows, int64_t d) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (b >= batch) return;
  const float* v = values + b * k;
  const int64_t* ix = indices + b * k;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < d;
       c += static_cast<int64_t>(blockDim.x) * VEC) {
    float acc[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const float a = v[j];
      const int64_t l = ix[j];
      if (a == 0.0f || l < 0 || l >= num_rows) continue;
      float x[VEC];
      LoadVec<RowT, VEC>(rows + l * d + c, x);
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(a, x[i]));
    }
    StoreVec<RowT, VEC>(out + b * d + c, acc);
  }
}

template <typename RowT>
cudaError_t DenseSparseMatmulTyped(const float* values, const int64_t* indices, const RowT* rows,
                                   RowT* out, int64_t batch, int64_t k, int64_t num_rows,
                                   int64_t d, cudaStream_t stream) {
  const bool vec4 = d % 4 == 0 && Aligned(rows, 4 * sizeof(RowT)) && Aligned(out, 4 * sizeof(RowT));
  const int vec = vec4 ? 4 : 1;
  const int along = ThreadsAlong(d, vec);
  const dim3 block(along, kThreads / along);
  const dim3 grid(static_cast<unsigned>(CeilDiv(batch, block.y)));
  if (vec4) {
    DenseSparseMatmulKernel<RowT, 4><<<grid, block, 0, stream>>>(values, indices, rows, out, batch,
                                                                k, num_rows, d);
  } else {
    DenseSparseMatmulKernel<RowT, 1><<<grid, block, 0, stream>>>(values, indices, rows, out, batch,
                                                                k, num_rows, d);
  }
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------------
// MatmulAtSparseIndices: one warp per entry.

template <typename RowT, int VEC>
__global__ void __launch_bounds__(kThreads)
    MatmulAtSparseIndicesKernel(const float* __restrict__ dense, const RowT* __restrict__ rows,
                                const int64_t* __restrict__ indices, float* __restrict__ out,
                                int64_t entries, int64_t k, int64_t num_rows, int64_t d) {
  const int64_t e = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (e >= entries) return;  // the whole warp: blockDim.x is a multiple of 32
  const int lane = threadIdx.x % kWarp;
  const int64_t l = indices[e];
  float sum = 0.0f;
  if (l >= 0 && l < num_rows) {
    const float* x = dense + (e / k) * d;
    const RowT* r = rows + l * d;
    for (int64_t c = static_cast<int64_t>(lane) * VEC; c < d; c += kWarp * VEC) {
      float xs[VEC], rs[VEC];
      LoadVec<float, VEC>(x + c, xs);
      LoadVec<RowT, VEC>(r + c, rs);
#pragma unroll
      for (int i = 0; i < VEC; ++i) sum = fmaf(xs[i], rs[i], sum);
    }
  }
  sum = device::WarpSum(sum);
  if (lane == 0) out[e] = sum;
}

template <typename RowT>
cudaError_t MatmulAtSparseIndicesTyped(const float* dense, const RowT* rows,
                                       const int64_t* indices, float* out, int64_t batch,
                                       int64_t k, int64_t num_rows, int64_t d,
                                       cudaStream_t stream) {
  const int64_t entries = batch * k;
  const bool vec4 = d % 4 == 0 && Aligned(dense, 16) && Aligned(rows, 4 * sizeof(RowT));
  const dim3 grid(static_cast<unsigned>(CeilDiv(entries * kWarp, kThreads)));
  if (vec4) {
    MatmulAtSparseIndicesKernel<RowT, 4><<<grid, kThreads, 0, stream>>>(dense, rows, indices, out,
                                                                       entries, k, num_rows, d);
  } else {
    MatmulAtSparseIndicesKernel<RowT, 1><<<grid, kThreads, 0, stream>>>(dense, rows, indices, out,
                                                                       entries, k, num_rows, d);
  }
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------------
// Grouping by latent.

__global__ void PrepareKeysKernel(const int64_t* __restrict__ indices, int64_t entries,
                                  int64_t num_rows, uint32_t* __restrict__ keys,
                                  int32_t* __restrict__ positions) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= entries) return;
  const int64_t l = indices[e];
  keys[e] = static_cast<uint32_t>(l >= 0 && l < num_rows ? l : num_rows);
  positions[e] = static_cast<int32_t>(e);
}

__global__ void MarkRunHeadsKernel(const uint32_t* __restrict__ sorted, int64_t entries,
                                   int32_t* __restrict__ heads) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= entries) return;
  heads[i] = i == 0 || sorted[i] != sorted[i - 1];
}

// `run_number[i]` is the inclusive count of heads up to i: a head's run is run_number[i] - 1.
__global__ void RecordRunsKernel(const int32_t* __restrict__ heads,
                                 const int32_t* __restrict__ run_number, int64_t entries,
                                 int32_t* __restrict__ run_start, int32_t* __restrict__ num_runs) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= entries) return;
  if (heads[i]) run_start[run_number[i] - 1] = static_cast<int32_t>(i);
  if (i == entries - 1) {
    run_start[run_number[i]] = static_cast<int32_t>(entries);
    *num_runs = run_number[i];
  }
}

// Bits of the sort keys: ids in [0, num_rows], num_rows being the out-of-range bucket.
int KeyBits(int64_t num_rows) {
  int bits = 1;
  while (bits < 32 && (uint64_t{1} << bits) <= static_cast<uint64_t>(num_rows)) ++bits;
  return bits;
}

constexpr size_t kAlign = 256;
size_t AlignUp(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// Offsets of the grouping's buffers within the scratch.
struct GroupLayout {
  size_t keys_in, keys_out, positions_in, positions_out, run_start, num_runs, temp, temp_bytes,
      total;
};

GroupLayout LayoutFor(int64_t entries, int64_t num_rows, cudaError_t* status) {
  const int n = static_cast<int>(entries);
  size_t sort_bytes = 0, scan_bytes = 0;
  *status = cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr),
                                            static_cast<uint32_t*>(nullptr),
                                            static_cast<const int32_t*>(nullptr),
                                            static_cast<int32_t*>(nullptr), n, 0,
                                            KeyBits(num_rows));
  if (*status == cudaSuccess) {
    *status = cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, static_cast<const int32_t*>(nullptr),
                                            static_cast<int32_t*>(nullptr), n);
  }
  GroupLayout g{};
  const size_t word = AlignUp(sizeof(int32_t) * static_cast<size_t>(entries));
  g.keys_in = 0;
  g.keys_out = g.keys_in + word;
  g.positions_in = g.keys_out + word;
  g.positions_out = g.positions_in + word;
  g.run_start = g.positions_out + word;
  g.num_runs = g.run_start + AlignUp(sizeof(int32_t) * static_cast<size_t>(entries + 1));
  g.temp = g.num_runs + kAlign;
  g.temp_bytes = std::max<size_t>({sort_bytes, scan_bytes, 1});
  g.total = g.temp + AlignUp(g.temp_bytes);
  return g;
}

// ---------------------------------------------------------------------------------------------
// ScatterAddOuterByLatent. Grouped: blockIdx.y picks a slice of d, threads one vector of it;
// blocks stride over the runs. Atomic: token b is block row threadIdx.y.

template <typename OutT, int VEC>
__global__ void __launch_bounds__(kThreads)
    ScatterAddGroupedKernel(LatentGroups groups, const float* __restrict__ values,
                            const float* __restrict__ dense, OutT* __restrict__ out, int64_t k,
                            int64_t d) {
  const int64_t c = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;
  if (c >= d) return;
  const int num_runs = *groups.num_runs;
  for (int r = blockIdx.x; r < num_runs; r += gridDim.x) {
    const int start = groups.run_start[r], end = groups.run_start[r + 1];
    const uint32_t latent = groups.sorted_ids[start];
    if (latent >= groups.num_rows) continue;  // the out-of-range bucket
    OutT* dst = out + static_cast<int64_t>(latent) * d + c;
    float acc[VEC];
    LoadVec<OutT, VEC>(dst, acc);
    int p = start;
    // Four entries' loads in flight at once; the additions stay in entry order.
    for (; p + 4 <= end; p += 4) {
      int32_t e[4];
      float a[4], x[4][VEC];
#pragma unroll
      for (int u = 0; u < 4; ++u) e[u] = groups.sorted_entries[p + u];
#pragma unroll
      for (int u = 0; u < 4; ++u) a[u] = values[e[u]];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (a[u] != 0.0f) LoadVec<float, VEC>(dense + (e[u] / k) * d + c, x[u]);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (a[u] == 0.0f) continue;
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(a[u], x[u][i]));
      }
    }
    for (; p < end; ++p) {
      const int32_t e = groups.sorted_entries[p];
      const float a = values[e];
      if (a == 0.0f) continue;
      float x[VEC];
      LoadVec<float, VEC>(dense + (e / k) * d + c, x);
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(a, x[i]));
    }
    StoreVec<OutT, VEC>(dst, acc);
  }
}

template <int VEC>
__global__ void __launch_bounds__(kThreads)
    ScatterAddAtomicKernel(const float* __restrict__ values, const int64_t* __restrict__ indices,
                           const float* __restrict__ dense, float* __restrict__ out,
                           int64_t batch, int64_t k, int64_t num_rows, int64_t d) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (b >= batch) return;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < d;
       c += static_cast<int64_t>(blockDim.x) * VEC) {
    float x[VEC];
    LoadVec<float, VEC>(dense + b * d + c, x);
    for (int64_t j = 0; j < k; ++j) {
      const float a = values[b * k + j];
      const int64_t l = indices[b * k + j];
      if (a == 0.0f || l < 0 || l >= num_rows) continue;
      float* dst = out + l * d + c;
      if constexpr (VEC == 4) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && CUDART_VERSION >= 12060
        atomicAdd(reinterpret_cast<float4*>(dst), make_float4(a * x[0], a * x[1], a * x[2], a * x[3]));
#else
#pragma unroll
        for (int i = 0; i < 4; ++i) atomicAdd(dst + i, a * x[i]);
#endif
      } else {
        atomicAdd(dst, a * x[0]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SumByLatent. Grouped: one warp per run loads 32 entries at a time and every lane adds them in
// order (shuffles), so a long run costs one memory round trip per 32 entries.

__global__ void __launch_bounds__(kThreads)
    SumByLatentGroupedKernel(LatentGroups groups, const float* __restrict__ values,
                             float* __restrict__ out) {
  const int lane = threadIdx.x % kWarp;
  const int warps = gridDim.x * (blockDim.x / kWarp);
  const int num_runs = *groups.num_runs;
  for (int r = blockIdx.x * (blockDim.x / kWarp) + threadIdx.x / kWarp; r < num_runs; r += warps) {
    const int start = groups.run_start[r], end = groups.run_start[r + 1];
    const uint32_t latent = groups.sorted_ids[start];
    if (latent >= groups.num_rows) continue;  // uniform over the warp
    double sum = 0.0;
    for (int base = start; base < end; base += kWarp) {
      const int p = base + lane;
      const double v = p < end ? static_cast<double>(values[groups.sorted_entries[p]]) : 0.0;
      const int n = min(kWarp, end - base);
      for (int i = 0; i < n; ++i) sum += __shfl_sync(0xFFFFFFFFu, v, i);
    }
    if (lane == 0) out[latent] = static_cast<float>(sum);
  }
}

__global__ void SumByLatentAtomicKernel(const float* __restrict__ values,
                                        const int64_t* __restrict__ indices, int64_t entries,
                                        int64_t num_rows, double* __restrict__ out) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= entries) return;
  const int64_t l = indices[e];
  if (l >= 0 && l < num_rows) atomicAdd(out + l, static_cast<double>(values[e]));
}

// Blocks that stride over at most `bound` runs: enough to fill the device, few enough that
// blocks past the device-side run count cost nothing.
unsigned RunBlocks(int64_t bound, int64_t per_block, int64_t cap) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(CeilDiv(bound, per_block), cap)));
}

}  // namespace

cudaError_t LaunchDenseSparseMatmul(const float* values, const int64_t* indices, const void* rows,
                                    void* out, RowType type, int64_t batch, int64_t k,
                                    int64_t num_rows, int64_t d, cudaStream_t stream) {
  if (batch == 0 || d == 0) return cudaSuccess;
  if (type == RowType::kFloat32) {
    return DenseSparseMatmulTyped(values, indices, static_cast<const float*>(rows),
                                  static_cast<float*>(out), batch, k, num_rows, d, stream);
  }
  return DenseSparseMatmulTyped(values, indices, static_cast<const uint16_t*>(rows),
                                static_cast<uint16_t*>(out), batch, k, num_rows, d, stream);
}

cudaError_t LaunchMatmulAtSparseIndices(const float* dense, const void* rows, RowType rows_type,
                                        const int64_t* indices, float* out, int64_t batch,
                                        int64_t k, int64_t num_rows, int64_t d,
                                        cudaStream_t stream) {
  if (batch == 0 || k == 0) return cudaSuccess;
  if (rows_type == RowType::kFloat32) {
    return MatmulAtSparseIndicesTyped(dense, static_cast<const float*>(rows), indices, out, batch,
                                      k, num_rows, d, stream);
  }
  return MatmulAtSparseIndicesTyped(dense, static_cast<const uint16_t*>(rows), indices, out, batch,
                                    k, num_rows, d, stream);
}

size_t GroupByLatentScratchBytes(int64_t entries, int64_t num_rows) {
  cudaError_t status;
  const GroupLayout layout = LayoutFor(entries, num_rows, &status);
  return status == cudaSuccess ? layout.total : 0;
}

cudaError_t LaunchGroupByLatent(const int64_t* indices, int64_t entries, int64_t num_rows,
                                void* scratch, size_t scratch_bytes, cudaStream_t stream,
                                LatentGroups* groups) {
  cudaError_t status;
  const GroupLayout layout = LayoutFor(entries, num_rows, &status);
  if (status != cudaSuccess) return status;
  if (scratch_bytes < layout.total) return cudaErrorInvalidValue;
  auto* base = static_cast<unsigned char*>(scratch);
  auto* keys_in = reinterpret_cast<uint32_t*>(base + layout.keys_in);
  auto* keys_out = reinterpret_cast<uint32_t*>(base + layout.keys_out);
  auto* positions_in = reinterpret_cast<int32_t*>(base + layout.positions_in);
  auto* positions_out = reinterpret_cast<int32_t*>(base + layout.positions_out);
  auto* run_start = reinterpret_cast<int32_t*>(base + layout.run_start);
  auto* num_runs = reinterpret_cast<int32_t*>(base + layout.num_runs);
  *groups = LatentGroups{keys_out, positions_out, run_start, num_runs, entries, num_rows};
  if (entries == 0) return cudaMemsetAsync(num_runs, 0, sizeof(int32_t), stream);

  const unsigned blocks = static_cast<unsigned>(CeilDiv(entries, kThreads));
  PrepareKeysKernel<<<blocks, kThreads, 0, stream>>>(indices, entries, num_rows, keys_in,
                                                     positions_in);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;
  size_t temp_bytes = layout.temp_bytes;
  status = cub::DeviceRadixSort::SortPairs(base + layout.temp, temp_bytes, keys_in, keys_out,
                                           positions_in, positions_out, static_cast<int>(entries),
                                           0, KeyBits(num_rows), stream);
  if (status != cudaSuccess) return status;
  // The unsorted keys and positions are dead: their buffers hold the run heads and run numbers.
  int32_t* heads = reinterpret_cast<int32_t*>(keys_in);
  int32_t* run_number = positions_in;
  MarkRunHeadsKernel<<<blocks, kThreads, 0, stream>>>(keys_out, entries, heads);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;
  temp_bytes = layout.temp_bytes;
  status = cub::DeviceScan::InclusiveSum(base + layout.temp, temp_bytes, heads, run_number,
                                         static_cast<int>(entries), stream);
  if (status != cudaSuccess) return status;
  RecordRunsKernel<<<blocks, kThreads, 0, stream>>>(heads, run_number, entries, run_start,
                                                    num_runs);
  return cudaGetLastError();
}

cudaError_t LaunchScatterAddGrouped(const LatentGroups& groups, const float* values,
                                    const float* dense, void* out, RowType out_type, int64_t k,
                                    int64_t d, cudaStream_t stream) {
  if (groups.entries == 0 || d == 0) return cudaSuccess;
  const size_t elem = out_type == RowType::kFloat32 ? sizeof(float) : sizeof(uint16_t);
  const bool vec4 = d % 4 == 0 && Aligned(out, 4 * elem) && Aligned(dense, 16);
  const int vec = vec4 ? 4 : 1;
  const int threads = ThreadsAlong(d, vec);
  const int64_t slices = CeilDiv(d, static_cast<int64_t>(threads) * vec);
  if (slices > 65535) return cudaErrorInvalidConfiguration;
  const int64_t bound = std::min(groups.entries, groups.num_rows + 1);
  const dim3 grid(RunBlocks(bound, 1, 16384), static_cast<unsigned>(slices));
#define SAEGRID_SCATTER_GROUPED(T, V)                                                         \
  ScatterAddGroupedKernel<T, V><<<grid, threads, 0, stream>>>(groups, values, dense,          \
                                                              static_cast<T*>(out), k, d)
  if (out_type == RowType::kFloat32) {
    if (vec4) SAEGRID_SCATTER_GROUPED(float, 4); else SAEGRID_SCATTER_GROUPED(float, 1);
  } else {
    if (vec4) SAEGRID_SCATTER_GROUPED(uint16_t, 4); else SAEGRID_SCATTER_GROUPED(uint16_t, 1);
  }
#undef SAEGRID_SCATTER_GROUPED
  return cudaGetLastError();
}

cudaError_t LaunchScatterAddAtomic(const float* values, const int64_t* indices, const float* dense,
                                   float* out, int64_t batch, int64_t k, int64_t num_rows,
                                   int64_t d, cudaStream_t stream) {
  if (batch == 0 || k == 0 || d == 0) return cudaSuccess;
  const bool vec4 = d % 4 == 0 && Aligned(out, 16) && Aligned(dense, 16);
  const int vec = vec4 ? 4 : 1;
  const int along = ThreadsAlong(d, vec);
  const dim3 block(along, kThreads / along);
  const dim3 grid(static_cast<unsigned>(CeilDiv(batch, block.y)));
  if (vec4) {
    ScatterAddAtomicKernel<4><<<grid, block, 0, stream>>>(values, indices, dense, out, batch, k,
                                                         num_rows, d);
  } else {
    ScatterAddAtomicKernel<1><<<grid, block, 0, stream>>>(values, indices, dense, out, batch, k,
                                                         num_rows, d);
  }
  return cudaGetLastError();
}

cudaError_t LaunchSumByLatentGrouped(const LatentGroups& groups, const float* values, float* out,
                                     cudaStream_t stream) {
  if (groups.entries == 0) return cudaSuccess;
  const int64_t bound = std::min(groups.entries, groups.num_rows + 1);
  SumByLatentGroupedKernel<<<RunBlocks(bound, kThreads / kWarp, 8192), kThreads, 0, stream>>>(
      groups, values, out);
  return cudaGetLastError();
}

cudaError_t LaunchSumByLatentAtomic(const float* values, const int64_t* indices, int64_t entries,
                                    int64_t num_rows, double* out, cudaStream_t stream) {
  if (entries == 0) return cudaSuccess;
  SumByLatentAtomicKernel<<<static_cast<unsigned>(CeilDiv(entries, kThreads)), kThreads, 0,
                            stream>>>(values, indices, entries, num_rows, out);
  return cudaGetLastError();
}

}  // namespace saegrid::kernels::cuda
