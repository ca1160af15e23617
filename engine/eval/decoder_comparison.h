// Comparing a smaller and a larger SAE trained on the same hookpoint by their decoder rows: each
// latent of the larger SAE is matched with the decoder row of the smaller SAE it is most similar to
// (maximum cosine similarity). A latent whose best match stays below a threshold is "novel", a
// direction the smaller SAE does not have; the others are "reconstruction" latents, ones the
// smaller SAE already has (up to splitting).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace saegrid {

struct DecoderComparison {
  torch::Tensor max_cosine;  // [n_large] float32 (float64 if an input is), on the inputs' device
  // [n_large] int64: a row of the smaller SAE attaining max_cosine; -1 for a zero row of the
  // larger SAE, which has no direction.
  torch::Tensor nearest;
  double threshold = 0.7;
  double novel_fraction = 0;           // max cosine < threshold
  double reconstruction_fraction = 0;  // max cosine >= threshold
  double mean_max_cosine = 0;
  // 20 bins of max cosine on [-1, 1], each 0.1 wide and closed on the left (bin i holds
  // [-1 + 0.1 i, -1 + 0.1 (i + 1))); the last also holds 1.
  std::vector<int64_t> histogram;
};

// smaller_rows [n_s, d] and larger_rows [n_l, d], floating point, n_s, n_l, d > 0, on one device.
// Rows need not be unit norm: they are normalised, and a zero row has cosine 0 with everything.
// `threshold` in [-1, 1]. The larger SAE's rows are processed `chunk_rows` at a time (0: chosen
// so that a chunk's [chunk, n_s] cosine block stays about 2^24 entries), so 32k x 32k fits; the
// result does not depend on the chunking. Errors name the argument and the shapes.
absl::StatusOr<DecoderComparison> CompareDecoders(const torch::Tensor& smaller_rows,
                                                  const torch::Tensor& larger_rows,
                                                  double threshold = 0.7, int64_t chunk_rows = 0);

}  // namespace saegrid
