#include "engine/dead_latents.h"

#include <torch/torch.h>

namespace saegrid {

DeadLatentTracker::DeadLatentTracker(int64_t num_latents, torch::Device device)
    : tokens_since_fired_(torch::zeros({num_latents}, torch::TensorOptions().dtype(torch::kLong).device(device))) {}

void DeadLatentTracker::Update(const torch::Tensor& indices, const torch::Tensor& acts,
                               int64_t tokens) {
  UpdateFired(FiredMask(indices, acts), tokens);
}

torch::Tensor DeadLatentTracker::FiredMask(const torch::Tensor& indices, const torch::Tensor& acts) const {
  // Firings counted per latent with a scatter (not masked_select, whose data-dependent size
  // would need a host synchronisation on an accelerator), then clamped to a 0/1 mask.
  auto fired = torch::zeros({tokens_since_fired_.size(0)}, tokens_since_fired_.options().dtype(torch::kInt));
  fired.index_add_(0, indices.reshape(-1), (acts > 0).reshape(-1).to(torch::kInt));
  return fired.clamp_max_(1);
}

void DeadLatentTracker::UpdateFired(const torch::Tensor& fired_mask, int64_t tokens) {
  tokens_since_fired_.add_(tokens);
  tokens_since_fired_.masked_fill_(fired_mask > 0, 0);
}

}  // namespace saegrid
