// CPU scan behind kernels/running_topk.h: one chunk offered to every row's heap.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace saegrid::kernels::cpu {

// The heaps of kernels::RunningTopK, laid out row-major (k slots per row).
struct RowHeaps {
  float* values;
  int64_t* ids;
  int64_t* filled;
  int64_t k;
};

// Offers `chunk` [rows, C] (contiguous; float32, bfloat16 or float64) to `heaps`; `columns`
// (undefined, or int64 positions within the chunk) restricts the offered columns.
void OfferChunk(const torch::Tensor& chunk, int64_t first_latent, const torch::Tensor& columns,
                RowHeaps heaps);

}  // namespace saegrid::kernels::cpu
