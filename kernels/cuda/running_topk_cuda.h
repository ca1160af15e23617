// CUDA implementation of RunningTopK's offer (kernels/running_topk.h), built only with a CUDA
// LibTorch. The running state is the device representation shared with kernels/portable/:
// `values` [rows, k] float32 sorted descending (ties: lower id first; -inf marks an empty slot,
// whose id is 0) and `ids` [rows, k] int64.
//
// One pass over the chunk: each row's entries are compared with the row's current k-th value
// (a per-row threshold filter), and only the few that pass are merged into the row's state with
// a small sort in shared memory, so the B x C chunk is read once and never written in float32.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace saegrid::kernels::cuda {

// Largest k the kernel handles; RunningTopK routes a larger k to the portable path.
constexpr int64_t kMaxRunningTopK = 1024;

// `chunk` [rows, C] float32 or bfloat16, contiguous, on the state's device; column c is latent
// `first_latent + c`. `columns` (undefined, or int64 positions within the chunk, ascending)
// restricts the offered columns. NaN entries are never selected. Updates `values` and `ids` in
// place; no host synchronisation.
void OfferChunk(const torch::Tensor& chunk, int64_t first_latent, const torch::Tensor& columns,
                torch::Tensor& values, torch::Tensor& ids);

}  // namespace saegrid::kernels::cuda
