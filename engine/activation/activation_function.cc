#include "engine/activation/activation_function.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "engine/activation/architectures.h"

namespace saegrid {

torch::Tensor ActivationFunction::Activate(const torch::Tensor& pre, const torch::Tensor& /*indices*/,
                                           const SaeParameters& /*params*/) const {
  return torch::relu(pre);
}

absl::StatusOr<torch::Tensor> ActivationFunction::Penalty(const torch::Tensor& /*pre*/,
                                                          const torch::Tensor& /*acts*/,
                                                            const torch::Tensor& /*indices*/,
                                                            const SaeParameters& /*params*/,
                                                            int64_t /*rows_total*/,
                                                            Communicator* /*shards*/) const {
  return torch::Tensor();
}

std::unique_ptr<ActivationFunction> MakeActivationFunction(const ModelConfig& config) {
  switch (config.architecture) {
    case Architecture::kTopK: return MakeTopK(config);
    case Architecture::kBatchTopK: return MakeBatchTopK(config);
    case Architecture::kJumpReLU: return MakeJumpReLU(config);
    case Architecture::kMatryoshka: return MakeMatryoshka(config);
    case Architecture::kReLU: return MakeReLU(config);
  }
  return MakeTopK(config);
}

int64_t ScheduledK(const ModelConfig& config, int64_t step) {
  if (config.k_initial <= config.k || config.k_schedule_steps <= 0 || step >= config.k_schedule_steps) {
    return config.k;
  }
  const double progress = static_cast<double>(step) / static_cast<double>(config.k_schedule_steps);
  const double k = static_cast<double>(config.k_initial) +
                   (static_cast<double>(config.k) - static_cast<double>(config.k_initial)) * progress;
  return std::max<int64_t>(config.k, static_cast<int64_t>(std::llround(k)));
}

double NextInferenceThreshold(double current, double batch_min, double decay, bool first) {
  if (!std::isfinite(batch_min)) return current;
  if (first) return batch_min;
  return decay * current + (1.0 - decay) * batch_min;
}

}  // namespace saegrid
