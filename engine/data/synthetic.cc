#include "engine/data/synthetic.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>

namespace saegrid {

SyntheticData GenerateSyntheticData(const SyntheticDataConfig& config, const SyntheticOptions& options) {
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(config.seed);
  const int64_t f = config.num_features, d = config.d;
  SyntheticData out;
  // features: [d, F] with unit columns in the seed; stored here as unit rows [F, d].
  auto features = torch::randn({d, f}, gen, torch::kFloat);
  features = features / features.norm(2, 0, true);
  out.features = features.t().contiguous();
  // alpha ~ N(0, A A^T) is A z with z ~ N(0, I): the covariance the seed builds, no Cholesky.
  const auto a = torch::randn({f, f}, gen, torch::kFloat);
  const auto decay_exponent = config.lambda_decay * torch::arange(f, torch::kFloat);
  if (options.fresh_samples_stream != 0) {
    gen = at::detail::createCPUGenerator(config.seed + options.fresh_samples_stream);
  }
  out.samples = torch::empty({config.num_samples, d}, torch::kFloat);
  if (options.keep_active) out.active = torch::empty({config.num_samples, f}, torch::kBool);
  constexpr int64_t kChunk = 8192;
  for (int64_t begin = 0; begin < config.num_samples; begin += kChunk) {
    const int64_t n = std::min(kChunk, config.num_samples - begin);
    const auto alpha = torch::randn({n, f}, gen, torch::kFloat).mm(a.t());
    auto p = 0.5 * torch::erfc(-alpha / std::sqrt(2.0));  // standard normal CDF
    p = p.pow(decay_exponent);
    p = p * (config.avg_active_features / (f * p.mean(1, true)));
    const auto active = torch::bernoulli(p.clamp(0, 1), gen);
    const auto coef = active * torch::rand({n, f}, gen, torch::kFloat);
    out.samples.narrow(0, begin, n).copy_(coef.mm(out.features));
    if (options.keep_active) out.active.narrow(0, begin, n).copy_(active > 0);
  }
  return out;
}

}  // namespace saegrid
