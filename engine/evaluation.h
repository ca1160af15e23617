// Evaluation of an SAE on held-out activations: reconstruction (FVU, MSE), sparsity (L0, dead and
// never-fired fractions, the log10 latent-density histogram), the dense-latents check of seed 000,
// and, when ground-truth features exist, recovery (MMCS, fraction recovered at a cosine bar).
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/sae_model.h"
#include "nlohmann/json.hpp"

namespace saegrid {

struct SuiteReport;  // engine/eval/suite.h

struct EvalResult {
  // "held_out" normally; "training_sample" when the data has no held-out blocks
  // (data.eval_fraction 0, or too few blocks), so the figures are in-sample.
  std::string split = "held_out";
  int64_t tokens = 0;
  int64_t num_latents = 0;
  double fvu = 0;
  double mse = 0;
  double l0 = 0;
  double dead_fraction = 0;          // from training: silent for dead_tokens_threshold tokens
  double never_fired_fraction = 0;   // on the evaluation tokens
  // log10 of each latent's firing density on the evaluation tokens, binned on
  // [histogram_low, 0] in steps of histogram_step; latents that never fired are counted apart.
  double histogram_low = -8;
  double histogram_step = 0.5;
  std::vector<int64_t> density_histogram;
  int64_t never_fired = 0;
  torch::Tensor log10_density;  // [n], log10(density + 1e-10); for SAELens' sparsity file
  // Seed 000, E.5: mean density of the d_in densest latents, and that divided by L0.
  double densest_latents_mean_density = 0;
  double densest_latents_ratio = 0;
  // Ground truth (synthetic data only).
  bool has_ground_truth = false;
  int64_t num_true_features = 0;
  double mmcs = 0;
  double recovery_cosine = 0.9;
  double recovered_fraction = 0;
  // Sharded training (shards > 1): the capacity factor's effect. Overflow = a token whose lowest
  // offered candidate on some shard made the global top-k, so its selection may be truncated;
  // truncated = one whose selection was (a candidate a shard did not offer would have made it).
  int64_t shards = 1;
  int64_t candidates_per_shard = 0;       // k_in
  int64_t training_overflow_tokens = 0;   // over the whole run
  double training_overflow_rate = 0;
  int64_t training_truncated_tokens = 0;
  double training_truncated_rate = 0;
  double eval_overflow_rate = 0;          // the evaluation tokens under the same (S, k_in)
  double eval_truncated_rate = 0;
  // The papers' evaluations of evaluation.run, when they ran (evaluation.json's "evaluations").
  std::shared_ptr<const SuiteReport> evaluations;
};

// `inputs` are raw activations (normalised here as the model is configured); `weights` the
// parameters to evaluate (e.g. the EMA); `ground_truth` [F, d] or undefined.
EvalResult Evaluate(const SaeModel& model, const SaeParameters& weights, const torch::Tensor& inputs,
                    const torch::Tensor& ground_truth, double dead_fraction,
                    double recovery_cosine = 0.9);

// Mean over true features of the max cosine similarity to any decoder row, and the fraction of
// features whose max reaches `bar`.
std::pair<double, double> FeatureRecovery(const torch::Tensor& decoder_rows,
                                          const torch::Tensor& features, double bar);

nlohmann::json EvalResultToJson(const EvalResult& result);
std::string FormatEvalTable(const EvalResult& result);

}  // namespace saegrid
