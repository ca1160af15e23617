// Raw launchers of the sparse kernels (kernels/sparse_ops.h), free of LibTorch so that the .cu
// files compile with nvcc alone and the torch glue (sparse_ops_cuda.cc) compiles with the host
// compiler alone. Pointers are device pointers to contiguous row-major data; every launcher only
// enqueues work on `stream` (no host synchronisation) and returns the launch status.
//
// Sparse entries are [batch, k] (flat entry e = b * k + j). A latent id outside [0, num_rows)
// cannot be reported without a host round trip, so such an entry is skipped (the dispatchers
// validate ids where they can afford to).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace saegrid::kernels::cuda {

enum class RowType { kFloat32, kBFloat16 };  // bfloat16 buffers are passed as their raw bits

// out[b] = sum_j values[b, j] * rows[indices[b, j]]: `rows` [num_rows, d] and `out` [batch, d]
// of `type`, accumulated in float32 in entry order (entries with value 0 are skipped, as on the
// CPU). One block row per token; columns vectorised by 4.
cudaError_t LaunchDenseSparseMatmul(const float* values, const int64_t* indices, const void* rows,
                                    void* out, RowType type, int64_t batch, int64_t k,
                                    int64_t num_rows, int64_t d, cudaStream_t stream);

// out[b, j] = <dense[b], rows[indices[b, j]]> in float32 (0 for an out-of-range id): one warp
// per entry, a fixed-order warp reduction.
cudaError_t LaunchMatmulAtSparseIndices(const float* dense, const void* rows, RowType rows_type,
                                        const int64_t* indices, float* out, int64_t batch,
                                        int64_t k, int64_t num_rows, int64_t d,
                                        cudaStream_t stream);

// The B*K entries grouped by latent: a stable radix sort of the entry positions by id, then the
// runs of equal ids. Built in caller-provided scratch of GroupByLatentScratchBytes() bytes (on
// the device of `stream`, 256-byte aligned) and valid until that scratch is reused.
struct LatentGroups {
  const uint32_t* sorted_ids = nullptr;   // [entries]; ids out of range are num_rows
  const int32_t* sorted_entries = nullptr;  // [entries] flat positions, ascending within an id
  const int32_t* run_start = nullptr;     // [entries + 1]: run r is [run_start[r], run_start[r + 1])
  const int32_t* num_runs = nullptr;      // device scalar
  int64_t entries = 0;
  int64_t num_rows = 0;
};

// Scratch for `entries` (< 2^31) entries over `num_rows` (< 2^32 - 1) latents. Host only.
size_t GroupByLatentScratchBytes(int64_t entries, int64_t num_rows);
cudaError_t LaunchGroupByLatent(const int64_t* indices, int64_t entries, int64_t num_rows,
                                void* scratch, size_t scratch_bytes, cudaStream_t stream,
                                LatentGroups* groups);

// out[l] += sum over the entries of latent l of values[e] * dense[e / k], `out` [num_rows, d] of
// `out_type`, float32 `dense` [batch, d]. Grouped: one writer per output element, which adds the
// entries in ascending position order (the CPU's order and roundings, no fused multiply-add), so
// the result is bitwise reproducible.
cudaError_t LaunchScatterAddGrouped(const LatentGroups& groups, const float* values,
                                    const float* dense, void* out, RowType out_type, int64_t k,
                                    int64_t d, cudaStream_t stream);

// The same with one float32 atomicAdd per element (vector atomics on sm_90): no sort, no
// scratch, but the order of the additions, hence the rounding, varies from run to run.
cudaError_t LaunchScatterAddAtomic(const float* values, const int64_t* indices, const float* dense,
                                   float* out, int64_t batch, int64_t k, int64_t num_rows,
                                   int64_t d, cudaStream_t stream);

// out[l] = sum of the values of latent l, summed in float64 in ascending position order and
// rounded to float32 (the CPU's result bit for bit); latents without entries are not written.
cudaError_t LaunchSumByLatentGrouped(const LatentGroups& groups, const float* values, float* out,
                                     cudaStream_t stream);

// out[l] += values[e] with float64 atomics into `out` [num_rows] (zeroed by the caller).
cudaError_t LaunchSumByLatentAtomic(const float* values, const int64_t* indices, int64_t entries,
                                    int64_t num_rows, double* out, cudaStream_t stream);

}  // namespace saegrid::kernels::cuda
