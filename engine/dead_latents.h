// Tokens since each latent last fired (activation > 0). A latent is dead once that count reaches
// the threshold; counting tokens, not steps, keeps the definition batch-size independent.
#pragma once

#include <torch/types.h>

namespace saegrid {

class DeadLatentTracker {
 public:
  // The counters live on `device`, beside the selections they are updated from.
  explicit DeadLatentTracker(int64_t num_latents, torch::Device device = torch::kCPU);
  // `indices`/`acts` are the step's [B, K] selection; `tokens` the batch's token count.
  void Update(const torch::Tensor& indices, const torch::Tensor& acts, int64_t tokens);
  // [n] int32, 1 where a latent fired in this selection: what data-parallel replicas combine
  // (max) before UpdateFired, so that a latent that fired on any replica has fired.
  torch::Tensor FiredMask(const torch::Tensor& indices, const torch::Tensor& acts) const;
  void UpdateFired(const torch::Tensor& fired_mask, int64_t tokens);
  torch::Tensor DeadMask(int64_t threshold) const { return tokens_since_fired_ >= threshold; }
  // A host read (a synchronisation on an accelerator).
  int64_t CountDead(int64_t threshold) const { return DeadMask(threshold).sum().item<int64_t>(); }
  torch::Tensor& tokens_since_fired() { return tokens_since_fired_; }

 private:
  torch::Tensor tokens_since_fired_;  // [n] int64
};

}  // namespace saegrid
