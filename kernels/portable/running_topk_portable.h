// Portable offer behind kernels/running_topk.h: LibTorch operators only (topk, a stable sort,
// gathers), on the device of the state, with no host synchronisation. The state is the device
// representation of kernels/cuda/running_topk_cuda.h: `values` [rows, k] float32 sorted
// descending (ties: lower id first; -inf marks an empty slot, id 0) and `ids` [rows, k] int64.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace saegrid::kernels::portable {

// `chunk` [rows, C] (float32, bfloat16 or float64) on the state's device; `columns` as in
// RunningTopK::Offer. Replaces `values` and `ids` with the merged state.
void OfferChunk(const torch::Tensor& chunk, int64_t first_latent, const torch::Tensor& columns,
                torch::Tensor& values, torch::Tensor& ids);

}  // namespace saegrid::kernels::portable
