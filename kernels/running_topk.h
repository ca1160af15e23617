// A per-row running top-k over a matrix that arrives in column chunks, so that a wide row (one
// token's pre-activations over every latent) is never held whole: the encoder is evaluated one
// chunk of latents at a time and each chunk is offered here, then dropped.
//
// Each row keeps its best k (value, latent id) pairs in a small heap whose weakest entry is the
// row's threshold; a chunk is scanned once and only entries above the threshold touch the heap
// (about k * ln(n / k) insertions per row over n latents, so the scan is one compare per entry).
// Ties go to the lower latent id. NaN entries are never selected.
//
// The state lives where the chunks do. On the CPU it is the heaps above (kernels/cpu/); on an
// accelerator it is two [rows, k] device tensors kept sorted (kernels/cuda/ merges a chunk in one
// kernel, kernels/portable/ with topk and a sort), so offering a chunk never copies to the host.
// On the portable path, equal values exactly at the k-th place of one chunk may keep either id
// (LibTorch's topk does not order ties); everywhere else ties go to the lower id.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "kernels/dispatch.h"

namespace saegrid::kernels {

class RunningTopK {
 public:
  // `rows` rows, `k` >= 0 kept per row, for chunks on `device`.
  RunningTopK(int64_t rows, int64_t k, torch::Device device = torch::kCPU);

  // Offers `chunk` [rows, C] (float32, bfloat16 or float64; on the device), whose column c holds latent
  // `first_latent + c`. With `columns` defined (int64 positions within the chunk, ascending),
  // only those columns are offered (AuxK: the dead latents of the chunk).
  void Offer(const torch::Tensor& chunk, int64_t first_latent,
             const torch::Tensor& columns = torch::Tensor());

  // [rows, k] float32 values sorted descending (ties: lower id first) and their int64 latent
  // ids, on the device. A row offered fewer than k entries is padded with -inf and id 0.
  std::pair<torch::Tensor, torch::Tensor> Finish() const;

  int64_t rows() const { return rows_; }
  int64_t k() const { return k_; }
  Implementation implementation() const { return implementation_; }

 private:
  int64_t rows_;
  int64_t k_;
  torch::Device device_;
  Implementation implementation_;
  // kCuda and kPortable: the sorted device state (values float32, ids int64, [rows, k]).
  torch::Tensor device_values_, device_ids_;
  // kCpu:
  // Row r's heap is values_[r k, r k + filled_[r]) with ids_ alongside: a min-heap under
  // "weaker" (lower value, or equal value and higher id), so the root is the entry to evict.
  std::vector<float> values_;
  std::vector<int64_t> ids_;
  std::vector<int64_t> filled_;
};

}  // namespace saegrid::kernels
