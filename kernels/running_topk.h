// A per-row running top-k over a matrix that arrives in column chunks, so that a wide row (one
// token's pre-activations over every latent) is never held whole: the encoder is evaluated one
// chunk of latents at a time and each chunk is offered here, then dropped.
//
// Each row keeps its best k (value, latent id) pairs in a small heap whose weakest entry is the
// row's threshold; a chunk is scanned once and only entries above the threshold touch the heap
// (about k * ln(n / k) insertions per row over n latents, so the scan is one compare per entry).
// Ties go to the lower latent id. NaN entries are never selected.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace saegrid::kernels {

class RunningTopK {
 public:
  // `rows` rows, `k` >= 0 kept per row.
  RunningTopK(int64_t rows, int64_t k);

  // Offers `chunk` [rows, C] (float32, bfloat16 or float64; CPU), whose column c holds latent
  // `first_latent + c`. With `columns` defined (int64 positions within the chunk, ascending),
  // only those columns are offered (AuxK: the dead latents of the chunk).
  void Offer(const torch::Tensor& chunk, int64_t first_latent,
             const torch::Tensor& columns = torch::Tensor());

  // [rows, k] float32 values sorted descending (ties: lower id first) and their int64 latent
  // ids. A row offered fewer than k entries is padded with -inf and id 0.
  std::pair<torch::Tensor, torch::Tensor> Finish() const;

  int64_t rows() const { return rows_; }
  int64_t k() const { return k_; }

 private:
  int64_t rows_;
  int64_t k_;
  // Row r's heap is values_[r k, r k + filled_[r]) with ids_ alongside: a min-heap under
  // "weaker" (lower value, or equal value and higher id), so the root is the entry to evict.
  std::vector<float> values_;
  std::vector<int64_t> ids_;
  std::vector<int64_t> filled_;
};

}  // namespace saegrid::kernels
