// The running top-k merge on CUDA. A row's state fits in shared memory (k <= 1024), so each block
// keeps one row's state there for the whole chunk: the chunk row streams past a threshold test
// (one compare per entry, vector loads, read once), and the few entries that pass are sorted and
// merged in shared memory. Sorting by (value descending, id ascending) is a total order on the
// offered entries, so the result does not depend on the order in which threads append candidates
// and equals the CPU heap's selection exactly.
#include "kernels/cuda/running_topk_kernels.cuh"

#include <cmath>

#include "kernels/cuda/device_utils.cuh"

namespace saegrid::kernels::cuda {
namespace {

using device::Elem;

constexpr int kThreads = 256;
// Candidate buffer entries: a power of two of at least one tile (kThreads * 4 entries).
constexpr int kCapacity = 2048;

__device__ __forceinline__ bool Better(float av, int64_t aid, float bv, int64_t bid) {
  return av > bv || (av == bv && aid < bid);
}

// The shared-memory layout of one row (ids first for their 8-byte alignment).
struct RowState {
  int64_t* ids;        // [k] the state
  int64_t* out_ids;    // [k] the merge's output
  int64_t* cand_ids;   // [kCapacity]
  float* values;
  float* out_values;
  float* cand_values;
  int k;
};

__device__ __forceinline__ RowState Carve(unsigned char* smem, int k) {
  RowState s;
  s.ids = reinterpret_cast<int64_t*>(smem);
  s.out_ids = s.ids + k;
  s.cand_ids = s.out_ids + k;
  s.values = reinterpret_cast<float*>(s.cand_ids + kCapacity);
  s.out_values = s.values + k;
  s.cand_values = s.out_values + k;
  s.k = k;
  return s;
}

// Merges the `count` (>= 1) candidates into the state, keeping the best k; resets *counter.
// Called by the whole block; synchronises it.
__device__ void Merge(RowState& s, int count, int* counter) {
  int size = 1;
  while (size < count) size <<= 1;
  for (int i = count + threadIdx.x; i < size; i += blockDim.x) {
    s.cand_values[i] = -INFINITY;  // worse than any candidate (all beat some threshold)
    s.cand_ids[i] = INT64_MAX;
  }
  __syncthreads();
  // Bitonic sort of the candidates, best first.
  for (int span = 2; span <= size; span <<= 1) {
    for (int stride = span >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < size / 2; t += blockDim.x) {
        const int lo = 2 * t - (t & (stride - 1));
        const int hi = lo + stride;
        const bool best_first = (lo & span) == 0;
        const bool hi_better = Better(s.cand_values[hi], s.cand_ids[hi], s.cand_values[lo], s.cand_ids[lo]);
        if (hi_better == best_first) {
          const float v = s.cand_values[lo];
          const int64_t id = s.cand_ids[lo];
          s.cand_values[lo] = s.cand_values[hi];
          s.cand_ids[lo] = s.cand_ids[hi];
          s.cand_values[hi] = v;
          s.cand_ids[hi] = id;
        }
      }
      __syncthreads();
    }
  }
  // Merge of two sorted lists by rank: a state entry goes after the candidates better than it, a
  // candidate after the state entries at least as good (state first on a full tie).
  const int k = s.k;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const float v = s.values[i];
    const int64_t id = s.ids[i];
    int lo = 0, hi = count;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (Better(s.cand_values[mid], s.cand_ids[mid], v, id)) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    if (i + lo < k) {
      s.out_values[i + lo] = v;
      s.out_ids[i + lo] = id;
    }
  }
  for (int j = threadIdx.x; j < min(count, k); j += blockDim.x) {
    const float v = s.cand_values[j];
    const int64_t id = s.cand_ids[j];
    int lo = 0, hi = k;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (!Better(v, id, s.values[mid], s.ids[mid])) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    if (j + lo < k) {
      s.out_values[j + lo] = v;
      s.out_ids[j + lo] = id;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    s.values[i] = s.out_values[i];
    s.ids[i] = s.out_ids[i];
  }
  if (threadIdx.x == 0) *counter = 0;
  __syncthreads();
}

template <typename T, int VEC, bool kColumns>
__global__ void __launch_bounds__(kThreads)
    OfferChunkKernel(const T* __restrict__ chunk, int64_t width, int64_t first_latent,
                     const int64_t* __restrict__ columns, int64_t num_columns,
                     float* __restrict__ values, int64_t* __restrict__ ids, int k) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int appended;
  RowState s = Carve(smem, k);
  const int64_t row = blockIdx.x;
  float* row_values = values + row * k;
  int64_t* row_ids = ids + row * k;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    s.values[i] = row_values[i];
    s.ids[i] = row_ids[i];
  }
  if (threadIdx.x == 0) appended = 0;
  __syncthreads();

  float threshold = s.values[k - 1];
  int64_t threshold_id = s.ids[k - 1];
  const auto offer = [&](float v, int64_t id) {
    if (Better(v, id, threshold, threshold_id)) {  // false for NaN
      const int slot = atomicAdd(&appended, 1);
      s.cand_values[slot] = v;
      s.cand_ids[slot] = id;
    }
  };
  const T* src = chunk + row * width;
  const int64_t n = kColumns ? num_columns : width;
  constexpr int64_t kTile = static_cast<int64_t>(kThreads) * VEC;
  int count = 0;  // block-uniform: read from `appended` between two barriers
  bool changed = false;
  for (int64_t base = 0; base < n; base += kTile) {
    if (count + kTile > kCapacity) {
      Merge(s, count, &appended);
      count = 0;
      changed = true;
      threshold = s.values[k - 1];
      threshold_id = s.ids[k - 1];
    }
    const int64_t p = base + static_cast<int64_t>(threadIdx.x) * VEC;
    if (p < n) {
      if constexpr (kColumns) {
        const int64_t col = columns[p];
        if (col >= 0 && col < width) offer(Elem<T>::Load(src + col), first_latent + col);
      } else if constexpr (VEC == 4) {
        float x[4];
        Elem<T>::Load4(src + p, x);  // n % 4 == 0 on this path
#pragma unroll
        for (int i = 0; i < 4; ++i) offer(x[i], first_latent + p + i);
      } else {
        offer(Elem<T>::Load(src + p), first_latent + p);
      }
    }
    __syncthreads();
    count = appended;
    __syncthreads();  // every thread has read the count before the next tile appends
  }
  if (count > 0) {
    Merge(s, count, &appended);
    changed = true;
  }
  if (changed) {
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
      row_values[i] = s.values[i];
      row_ids[i] = s.ids[i];
    }
  }
}

template <typename T, int VEC, bool kColumns>
cudaError_t Launch(const T* chunk, int64_t rows, int64_t width, int64_t first_latent,
                   const int64_t* columns, int64_t num_columns, float* values, int64_t* ids, int k,
                   cudaStream_t stream) {
  const size_t bytes = static_cast<size_t>(k) * 2 * (sizeof(int64_t) + sizeof(float)) +
                       static_cast<size_t>(kCapacity) * (sizeof(int64_t) + sizeof(float));
  auto* kernel = &OfferChunkKernel<T, VEC, kColumns>;
  // Above 48 KiB (static + dynamic) a block must opt in to more shared memory.
  if (bytes > 32 * 1024) {
    const cudaError_t status = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (status != cudaSuccess) return status;
  }
  kernel<<<static_cast<unsigned>(rows), kThreads, bytes, stream>>>(chunk, width, first_latent,
                                                                   columns, num_columns, values,
                                                                   ids, k);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchTyped(const T* chunk, int64_t rows, int64_t width, int64_t first_latent,
                        const int64_t* columns, int64_t num_columns, float* values, int64_t* ids,
                        int k, cudaStream_t stream) {
  if (columns != nullptr) {
    return Launch<T, 1, true>(chunk, rows, width, first_latent, columns, num_columns, values, ids,
                              k, stream);
  }
  const bool vec4 = width % 4 == 0 && reinterpret_cast<uintptr_t>(chunk) % (4 * sizeof(T)) == 0;
  if (vec4) {
    return Launch<T, 4, false>(chunk, rows, width, first_latent, nullptr, 0, values, ids, k,
                               stream);
  }
  return Launch<T, 1, false>(chunk, rows, width, first_latent, nullptr, 0, values, ids, k, stream);
}

}  // namespace

cudaError_t LaunchOfferChunk(const void* chunk, ChunkType type, int64_t rows, int64_t width,
                             int64_t first_latent, const int64_t* columns, int64_t num_columns,
                             float* values, int64_t* ids, int64_t k, cudaStream_t stream) {
  if (k < 1 || k > kTopKLimit) return cudaErrorInvalidValue;
  if (rows > 0x7FFFFFFF) return cudaErrorInvalidConfiguration;
  if (rows == 0 || (columns != nullptr ? num_columns : width) == 0) return cudaSuccess;
  const int kk = static_cast<int>(k);
  if (type == ChunkType::kFloat32) {
    return LaunchTyped(static_cast<const float*>(chunk), rows, width, first_latent, columns,
                       num_columns, values, ids, kk, stream);
  }
  return LaunchTyped(static_cast<const uint16_t*>(chunk), rows, width, first_latent, columns,
                     num_columns, values, ids, kk, stream);
}

}  // namespace saegrid::kernels::cuda
