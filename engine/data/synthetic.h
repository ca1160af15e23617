// The synthetic data of seed 004 (Sharkey et al. 2022; generator given in full in the seed):
// ground-truth unit feature directions, per-sample feature probabilities from a correlated
// Gaussian pushed through the normal CDF, decayed by p_i^(lambda * i), rescaled to
// `avg_active_features` expected active features, Bernoulli trials, uniform [0, 1) magnitudes.
// Deterministic for a given seed.
#pragma once

#include <torch/types.h>

#include "engine/config.h"

namespace saegrid {

struct SyntheticData {
  torch::Tensor samples;   // [num_samples, d] float32
  torch::Tensor features;  // [num_features, d], unit rows: the ground truth
};

SyntheticData GenerateSyntheticData(const SyntheticDataConfig& config);

}  // namespace saegrid
