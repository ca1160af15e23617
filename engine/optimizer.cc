#include "engine/optimizer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "kernels/fused_adam.h"

namespace saegrid {

Adam::Adam(std::vector<torch::Tensor> params, const OptimizerConfig& config)
    : params_(std::move(params)), config_(config) {
  for (const auto& p : params_) {
    exp_avg_.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
    exp_avg_sq_.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
  }
}

void Adam::Step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_;
  const double b1 = config_.beta1, b2 = config_.beta2;
  const double bias1 = 1 - std::pow(b1, static_cast<double>(step_));
  const double bias2_sqrt = std::sqrt(1 - std::pow(b2, static_cast<double>(step_)));
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& grad = params_[i].grad();
    if (!grad.defined()) continue;
    exp_avg_[i].mul_(b1).add_(grad, 1 - b1);
    exp_avg_sq_[i].mul_(b2).addcmul_(grad, grad, 1 - b2);
    const auto denom = (exp_avg_sq_[i].sqrt() / bias2_sqrt).add_(config_.eps);
    params_[i].addcdiv_(exp_avg_[i], denom, -lr / bias1);
  }
}

namespace {

torch::Tensor ZeroNorm(const torch::Tensor& param) {
  return torch::zeros({}, param.options().dtype(torch::kDouble));
}

}  // namespace

std::vector<torch::Tensor> Adam::FusedStep(double lr, double grad_scale,
                                           const std::vector<bool>& unit_norm_rows) {
  torch::NoGradGuard no_grad;
  ++step_;
  kernels::AdamHyperparameters hyper;
  hyper.lr = lr;
  hyper.beta1 = config_.beta1;
  hyper.beta2 = config_.beta2;
  hyper.eps = config_.eps;
  hyper.step = step_;
  hyper.grad_scale = grad_scale;
  std::vector<torch::Tensor> squared_norms;
  for (size_t i = 0; i < params_.size(); ++i) {
    squared_norms.push_back(ZeroNorm(params_[i]));
    const auto& grad = params_[i].grad();
    if (!grad.defined()) continue;
    auto param = params_[i].detach();  // shares storage: updated in place
    squared_norms[i] = kernels::FusedAdamStep(param, grad, exp_avg_[i], exp_avg_sq_[i], hyper,
                                              i < unit_norm_rows.size() && unit_norm_rows[i]);
  }
  return squared_norms;
}

std::vector<torch::Tensor> Adam::FusedGradientSquaredNorms(const std::vector<bool>& unit_norm_rows) const {
  std::vector<torch::Tensor> squared_norms;
  for (size_t i = 0; i < params_.size(); ++i) {
    squared_norms.push_back(ZeroNorm(params_[i]));
    const auto& grad = params_[i].grad();
    if (!grad.defined()) continue;
    squared_norms[i] = kernels::FusedGradientSquaredNorm(
        params_[i].detach(), grad, i < unit_norm_rows.size() && unit_norm_rows[i]);
  }
  return squared_norms;
}

double ScheduledLearningRate(const OptimizerConfig& config, double base_lr, int64_t step,
                             int64_t total_steps) {
  double scale = 1;
  if (config.warmup_steps > 0 && step < config.warmup_steps) {
    scale = static_cast<double>(step + 1) / static_cast<double>(config.warmup_steps);
  }
  if (config.lr_decay == LrDecay::kLinear && total_steps > 0) {
    const double start = config.decay_start_fraction * static_cast<double>(total_steps);
    if (step >= start) {
      const double span = std::max(1.0, static_cast<double>(total_steps) - start);
      scale = std::min(scale, std::max(0.0, (static_cast<double>(total_steps) - step) / span));
    }
  }
  return base_lr * scale;
}

double DefaultLearningRate(int64_t num_latents) {
  return 2e-4 / std::sqrt(static_cast<double>(num_latents) / 16384.0);
}

double SquaredGradientNorm(const std::vector<torch::Tensor>& params) {
  torch::NoGradGuard no_grad;
  double total = 0;
  for (const auto& p : params) {
    if (p.grad().defined()) total += p.grad().to(torch::kDouble).pow(2).sum().item<double>();
  }
  return total;
}

double ClippingScale(double norm, double max_norm) {
  if (max_norm <= 0 || norm <= max_norm) return 1.0;
  return max_norm / (norm + 1e-6);
}

void ScaleGradientsToNorm(const std::vector<torch::Tensor>& params, double norm, double max_norm) {
  const double scale = ClippingScale(norm, max_norm);
  if (scale == 1.0) return;
  torch::NoGradGuard no_grad;
  for (const auto& p : params) {
    if (p.grad().defined()) p.mutable_grad().mul_(scale);
  }
}

double ClipGradientNorm(const std::vector<torch::Tensor>& params, double max_norm) {
  const double norm = std::sqrt(SquaredGradientNorm(params));
  ScaleGradientsToNorm(params, norm, max_norm);
  return norm;
}

WeightEma::WeightEma(const std::vector<torch::Tensor>& params, double decay) : decay_(decay) {
  for (const auto& p : params) shadow_.push_back(torch::zeros_like(p).detach());
}

void WeightEma::Update(const std::vector<torch::Tensor>& params) {
  torch::NoGradGuard no_grad;
  ++updates_;
  for (size_t i = 0; i < params.size(); ++i) shadow_[i].mul_(decay_).add_(params[i], 1 - decay_);
}

std::vector<torch::Tensor> WeightEma::Averaged() const {
  const double correction = 1 - std::pow(decay_, static_cast<double>(std::max<int64_t>(updates_, 1)));
  std::vector<torch::Tensor> out;
  for (const auto& s : shadow_) out.push_back(s / correction);
  return out;
}

}  // namespace saegrid
