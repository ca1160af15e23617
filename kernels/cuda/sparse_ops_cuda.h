// CUDA implementations behind kernels/sparse_ops.h (built only with a CUDA LibTorch). Inputs are
// validated and contiguous, on one CUDA device; work runs on the current CUDA stream and nothing
// here synchronises with the host.
#pragma once

#include <torch/types.h>

namespace saegrid::kernels::cuda {

torch::Tensor DenseSparseMatmul(const torch::Tensor& values, const torch::Tensor& indices,
                                const torch::Tensor& rows);
torch::Tensor MatmulAtSparseIndices(const torch::Tensor& dense, const torch::Tensor& rows,
                                    const torch::Tensor& indices);
// Grouped by latent (a sort of the B*K entries by latent id, then one block per run of equal
// ids), so each output row has one writer and the result is bitwise reproducible; the atomic
// variant is used only when at::globalContext().deterministicAlgorithms() is off.
void ScatterAddOuterByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                             const torch::Tensor& dense, torch::Tensor& out);
torch::Tensor SumByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                          int64_t num_rows);

}  // namespace saegrid::kernels::cuda
