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

}  // namespace saegrid
