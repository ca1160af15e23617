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
  torch::Tensor active;    // [num_samples, num_features] bool, only when asked for
};

struct SyntheticOptions {
  bool keep_active = false;  // fill SyntheticData::active (the probes' labels)
  // Nonzero: the same features and covariance, but samples drawn from a generator seeded with
  // seed + fresh_samples_stream, so they are not the training samples (a labelled set for
  // probes). 0: the training data itself.
  uint64_t fresh_samples_stream = 0;
};

SyntheticData GenerateSyntheticData(const SyntheticDataConfig& config, const SyntheticOptions& options = {});

}  // namespace saegrid
