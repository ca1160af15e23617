// Chunk consumers (engine/chunked_encoder.h) for the selections whose width varies by token, and
// the packing of their (row, latent, value) entries into a padded per-token Selection:
// - BatchTopKCollector: the best `capacity` entries of the whole [B, n] matrix (BatchTopK), plus
//   the next value when asked, for the sharded cut's truncation check;
// - ThresholdCollector: every entry above a per-latent (or one) threshold (JumpReLU, ReLU, and
//   BatchTopK's inference).
// They hold the entries they keep, never a whole chunk beyond its offer.
#pragma once

#include <torch/types.h>

#include <cstdint>

#include "engine/chunked_encoder.h"

namespace saegrid {

// (row, latent, value) entries of a [B, n] matrix, in no particular order unless stated.
struct LatentEntries {
  torch::Tensor rows;     // [E] int64
  torch::Tensor latents;  // [E] int64
  torch::Tensor values;   // [E] float32
};

class BatchTopKCollector final : public EncoderChunkConsumer {
 public:
  // Keeps the best `capacity` entries of a matrix of `num_latents` columns, and with `with_next`
  // the value of the (capacity + 1)-th.
  BatchTopKCollector(int64_t capacity, int64_t num_latents, bool with_next);
  void Offer(const torch::Tensor& pre, int64_t first_latent) override;
  // The kept entries sorted by value, descending (ties: the earlier offered first).
  LatentEntries Finish();
  // After Finish: the (capacity + 1)-th value (-inf when there was none); with_next only.
  torch::Tensor NextValue() const { return next_; }

 private:
  int64_t capacity_, num_latents_;
  bool with_next_;
  torch::Tensor values_, ids_;  // float32, row * num_latents + latent
  torch::Tensor next_;
};

class ThresholdCollector final : public EncoderChunkConsumer {
 public:
  // Entries strictly above `threshold`: [n] per latent, or a 0-d tensor for every latent.
  explicit ThresholdCollector(torch::Tensor threshold) : threshold_(std::move(threshold)) {}
  void Offer(const torch::Tensor& pre, int64_t first_latent) override;
  LatentEntries Finish() const;

 private:
  torch::Tensor threshold_;
  std::vector<torch::Tensor> rows_, latents_, values_;
};

// The entries as a per-token Selection [B, W], W the most entries of any row (at least 1):
// indices, values, and keep marking the slots in use (padding: id 0, value 0). Costs one host
// read (W).
Selection PackByRow(const LatentEntries& entries, int64_t batch);

}  // namespace saegrid
