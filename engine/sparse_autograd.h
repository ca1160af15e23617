// The sparse kernels of kernels/ wired into LibTorch autograd, so that the training step is
// sparse in both directions: no B x n decoder product and no B x n gradient tensor.
#pragma once

#include <torch/types.h>

namespace saegrid {

// Pre-activations (x - b_pre) W_enc^T + b_enc evaluated at the selected latents only.
// `selected_values` are those pre-activations, already computed by the dense encoder forward
// (the one dense matmul of the step) and returned as the differentiable output. Backward touches
// only the selected rows of W_enc and b_enc and uses the sum-first trick for b_pre:
//   dL/db_pre = -(sum over the batch of the sparse pre-activation gradient) @ W_enc.
// `x_centered` is x - b_pre, saved (detached) for the W_enc gradient; the input x gets no
// gradient.
torch::Tensor EncoderAtIndices(const torch::Tensor& x_centered, const torch::Tensor& w_enc,
                               const torch::Tensor& b_enc, const torch::Tensor& b_pre,
                               const torch::Tensor& indices, const torch::Tensor& selected_values);

// Sparse decode: out[b] = sum_j acts[b, j] * w_dec[indices[b, j]] (DenseSparseMatmul). Backward:
// the latent gradient at the selected indices only (MatmulAtSparseIndices) and a scatter by
// latent into the selected rows of W_dec.
torch::Tensor SparseDecode(const torch::Tensor& acts, const torch::Tensor& indices,
                           const torch::Tensor& w_dec);

}  // namespace saegrid
