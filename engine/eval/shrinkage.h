// Activation shrinkage (Gao et al. 2024, section 5.1). An encoder trained with a sparsity penalty
// tends to return activations smaller than the ones that would reconstruct best. To measure it,
// each token's active set S is frozen and its values re-optimised:
//   minimise ||x - (b_pre + sum_{j in S} a_j W_dec[j])||^2  subject to a_j >= 0,
// and the refined values are compared with the encoder's. A ratio above 1 means the encoder
// shrinks; a TopK SAE should give a ratio near 1.
//
// The solver is monotone accelerated projected gradient (Beck and Teboulle's MFISTA) started at
// the encoder's values, with step 1/L where L is the largest eigenvalue of the token's Gram
// matrix D_S D_S^T of its active decoder rows: it converges for every token, and no token's
// objective ever rises above its starting value, so fvu_after <= fvu_before.
#pragma once

#include <torch/types.h>

#include <cstdint>

#include "absl/status/statusor.h"

namespace saegrid {

struct ShrinkageResult {
  int64_t tokens = 0;
  int64_t iterations = 0;  // solver iterations run on every token
  // Mean, over the tokens whose original code is not all zero, of
  //   (sum of the refined values) / (sum of the original values);
  // 0 when no token has a nonzero code.
  double mean_ratio = 0;
  // sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean_row(x)||^2, with the original and the refined
  // values respectively.
  double fvu_before = 0;
  double fvu_after = 0;
  torch::Tensor refined;  // [N, k], the dtype and device of `acts`; inactive entries stay 0
};

// x [N, d] (the inputs the SAE saw, already normalised), N > 0; indices [N, k] integer, every
// entry in [0, n); acts [N, k] finite and >= 0 (an entry equal to 0 is not in the active set and
// stays 0); w_dec [n, d]; b_pre [d]; iterations >= 0. All floating-point tensors; they may be
// float32 (the solver works in float64) and on any device (the work is done on x's). Tokens are
// processed in chunks, so memory stays about N_chunk * k * d doubles. Errors name the argument
// and its shape.
absl::StatusOr<ShrinkageResult> RefineActivations(const torch::Tensor& x, const torch::Tensor& indices,
                                                  const torch::Tensor& acts, const torch::Tensor& w_dec,
                                                  const torch::Tensor& b_pre, int64_t iterations = 200);

}  // namespace saegrid
