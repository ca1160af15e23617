// Sparse kernels of the TopK SAE training step (Gao et al., section D.2).
//
// A sparse activation matrix is held as two [B, K] tensors: `indices` (int64 latent ids, each in
// [0, num_rows)) and `values` (the activation at that id). Padding entries carry value 0 and any
// valid id; they contribute nothing. Row matrices are [num_rows, d], one contiguous row per latent
// (the "decoder stored transposed" layout). Every function dispatches on the device of its inputs:
// CPU implementations live in kernels/cpu/, CUDA ones in kernels/cuda/ when built with CUDA.
#pragma once

#include <torch/types.h>

namespace saegrid::kernels {

// DenseSparseMatmul, decoder direction: out[b] = sum_j values[b, j] * rows[indices[b, j]].
// Returns [B, d] in the dtype of `rows`.
torch::Tensor DenseSparseMatmul(const torch::Tensor& values, const torch::Tensor& indices,
                                const torch::Tensor& rows);

// MatmulAtSparseIndices: out[b, j] = <dense[b], rows[indices[b, j]]>, i.e. (dense @ rows^T)
// evaluated only at the selected pairs. Returns [B, K] float32 (or the input dtype if wider).
torch::Tensor MatmulAtSparseIndices(const torch::Tensor& dense, const torch::Tensor& rows,
                                    const torch::Tensor& indices);

// DenseSparseMatmul, transposed: out[l] += sum over (b, j) with indices[b, j] == l of
// values[b, j] * dense[b]. `out` is [num_rows, d]; rows that no index names are left untouched.
// Entries are grouped by latent first, so each output row is written by one thread and there is
// no B*K*d temporary.
void ScatterAddOuterByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                             const torch::Tensor& dense, torch::Tensor& out);

// Per-latent sums of `values`: out[l] = sum over (b, j) with indices[b, j] == l of values[b, j].
// Returns [num_rows] float32.
torch::Tensor SumByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                          int64_t num_rows);

}  // namespace saegrid::kernels
