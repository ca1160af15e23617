#include "engine/dead_latents.h"

#include <torch/torch.h>

namespace saegrid {

DeadLatentTracker::DeadLatentTracker(int64_t num_latents)
    : tokens_since_fired_(torch::zeros({num_latents}, torch::kLong)) {}

void DeadLatentTracker::Update(const torch::Tensor& indices, const torch::Tensor& acts,
                               int64_t tokens) {
  const auto fired = indices.masked_select(acts > 0);
  tokens_since_fired_.add_(tokens);
  tokens_since_fired_.index_fill_(0, fired, 0);
}

torch::Tensor DeadLatentTracker::FiredMask(const torch::Tensor& indices, const torch::Tensor& acts) const {
  auto mask = torch::zeros({tokens_since_fired_.size(0)}, torch::kInt);
  mask.index_fill_(0, indices.masked_select(acts > 0), 1);
  return mask;
}

void DeadLatentTracker::UpdateFired(const torch::Tensor& fired_mask, int64_t tokens) {
  tokens_since_fired_.add_(tokens);
  tokens_since_fired_.masked_fill_(fired_mask > 0, 0);
}

}  // namespace saegrid
