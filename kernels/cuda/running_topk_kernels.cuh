// Raw launcher of the running top-k merge (kernels/cuda/running_topk_cuda.h), free of LibTorch
// (see sparse_ops_kernels.cuh for why). Only enqueues work on `stream`.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace saegrid::kernels::cuda {

enum class ChunkType { kFloat32, kBFloat16 };  // bfloat16 chunks are passed as their raw bits

// Largest k the kernel accepts (kMaxRunningTopK of running_topk_cuda.h).
constexpr int kTopKLimit = 1024;

// One block per state row. The row's state `values` / `ids` [rows, k] (sorted by value
// descending, ties lower id first; -inf with id 0 is an empty slot) is loaded into shared memory;
// the chunk row [C] is read once, in tiles of 1024 entries, and an entry enters a shared candidate
// buffer (2048 entries) when it beats the row's current k-th entry (a higher value, or the same
// value and a lower id; NaN never). When the buffer could overflow, and at the end, the candidates
// are sorted (bitonic) and merged with the state, which then gives the new threshold. With
// `columns` (ascending positions in [0, C), `num_columns` of them; others are skipped), only those
// entries are offered. Entry c is latent first_latent + c. Shared memory: 24 k + 24 Ki bytes per
// block (48 KiB at k = 1024, so several blocks share an SM). 1 <= k <= kTopKLimit.
cudaError_t LaunchOfferChunk(const void* chunk, ChunkType type, int64_t rows, int64_t width,
                             int64_t first_latent, const int64_t* columns, int64_t num_columns,
                             float* values, int64_t* ids, int64_t k, cudaStream_t stream);

}  // namespace saegrid::kernels::cuda
