// Adam (PyTorch semantics, no weight decay), the learning-rate schedule, global-norm gradient
// clipping and a bias-corrected EMA of the weights. State is plain tensors so that checkpoints
// can save and restore it exactly.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "engine/config.h"

namespace saegrid {

class Adam {
 public:
  Adam(std::vector<torch::Tensor> params, const OptimizerConfig& config);
  // One update from the parameters' .grad() at learning rate `lr` (the unfused reference).
  void Step(double lr);
  // The trainer's update: one fused pass per parameter (kernels/fused_adam.h) with the gradient
  // scaled by `grad_scale`; parameters flagged in `unit_norm_rows` (the decoder) also get the
  // gradient projection before and the row renormalisation after. Returns each parameter's
  // squared gradient norm as used, before the scale (0 for a parameter without a gradient), as
  // 0-d float64 tensors on the parameters' device: nothing here waits for the device.
  std::vector<torch::Tensor> FusedStep(double lr, double grad_scale, const std::vector<bool>& unit_norm_rows);
  // The squared norms FusedStep will report, without updating: clipping needs them first.
  std::vector<torch::Tensor> FusedGradientSquaredNorms(const std::vector<bool>& unit_norm_rows) const;

  int64_t step() const { return step_; }
  void set_step(int64_t step) { step_ = step; }
  std::vector<torch::Tensor>& exp_avg() { return exp_avg_; }
  std::vector<torch::Tensor>& exp_avg_sq() { return exp_avg_sq_; }

 private:
  std::vector<torch::Tensor> params_;
  OptimizerConfig config_;
  std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;
  int64_t step_ = 0;
};

// Linear warm-up over warmup_steps, then constant, or linear decay to 0 from
// decay_start_fraction * total_steps. `step` counts from 0.
double ScheduledLearningRate(const OptimizerConfig& config, double base_lr, int64_t step,
                             int64_t total_steps);

// The default learning rate: 2e-4 / sqrt(num_latents / 2^14).
double DefaultLearningRate(int64_t num_latents);

// Scales gradients so that their global L2 norm is at most max_norm; returns the norm before.
double ClipGradientNorm(const std::vector<torch::Tensor>& params, double max_norm);
// The pieces, for a norm summed over shards: the squared L2 norm of the gradients, and the
// scaling that brings a total norm `norm` down to `max_norm` (max_norm <= 0: no clipping).
double SquaredGradientNorm(const std::vector<torch::Tensor>& params);
void ScaleGradientsToNorm(const std::vector<torch::Tensor>& params, double norm, double max_norm);
// The factor ScaleGradientsToNorm applies (1: no clipping).
double ClippingScale(double norm, double max_norm);

// Exponential moving average of the weights, bias-corrected like Adam's moments:
// average = shadow / (1 - decay^updates).
class WeightEma {
 public:
  WeightEma(const std::vector<torch::Tensor>& params, double decay);
  void Update(const std::vector<torch::Tensor>& params);
  std::vector<torch::Tensor> Averaged() const;

  std::vector<torch::Tensor>& shadow() { return shadow_; }
  int64_t updates() const { return updates_; }
  void set_updates(int64_t n) { updates_ = n; }

 private:
  double decay_;
  std::vector<torch::Tensor> shadow_;
  int64_t updates_ = 0;
};

}  // namespace saegrid
