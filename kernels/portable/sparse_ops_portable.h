// Portable implementations behind kernels/sparse_ops.h: LibTorch operators only (embedding_bag,
// gathers, bmm, index_add_), so they run on any device LibTorch has. Inputs are validated and
// contiguous. Temporaries are bounded by processing the batch in slices.
#pragma once

#include <torch/types.h>

namespace saegrid::kernels::portable {

torch::Tensor DenseSparseMatmul(const torch::Tensor& values, const torch::Tensor& indices,
                                const torch::Tensor& rows);
torch::Tensor MatmulAtSparseIndices(const torch::Tensor& dense, const torch::Tensor& rows,
                                    const torch::Tensor& indices);
void ScatterAddOuterByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                             const torch::Tensor& dense, torch::Tensor& out);
torch::Tensor SumByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                          int64_t num_rows);

}  // namespace saegrid::kernels::portable
