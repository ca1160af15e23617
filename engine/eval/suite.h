// The papers' evaluations beyond reconstruction, run by name on one set of published SAE weights:
// what `saegrid eval` runs on a checkpoint and a job's evaluation.run at its end. Each evaluation
// is its own file under engine/eval/; this one finds their data (held-out sequences of the token
// file, held-out activation rows, a labelled set, another checkpoint), runs those named and
// collects their figures in one typed report.
//
//   model:       downstream_loss, ablation_sparsity, n2g, token_stats, top_examples
//   activations: probes, shrinkage, sae_comparison
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/eval/ablation_sparsity.h"
#include "engine/eval/downstream_loss.h"
#include "engine/eval/evaluation_names.h"
#include "engine/sae_model.h"
#include "nlohmann/json.hpp"

namespace saegrid {

struct TokenStatisticsSummary {
  int64_t latents_fired = 0;
  int64_t kept_tokens = 0;
  double mean_entropy = 0;
  double mean_effective_tokens = 0;
  double median_effective_tokens = 0;
  std::vector<int64_t> effective_tokens_histogram;  // [1,2), [2,4), ...
};

struct TopExamplesSummary {
  int64_t latents = 0;               // latents with at least one example
  int64_t examples_per_latent = 0;   // at most
  nlohmann::json file;               // the top_examples.json document
};

struct N2GSummary {
  int64_t latents = 0;               // latents explained (enough activating examples)
  double precision = 0;              // means over those latents
  double recall = 0;
  double f1 = 0;
  struct Latent {
    int64_t latent = 0;
    std::vector<std::string> patterns;  // token ids, "*" for a wildcard, "^" for an anchor
    double precision = 0, recall = 0, f1 = 0;
  };
  std::vector<Latent> per_latent;
};

struct ProbeSummary {
  std::vector<std::string> constant_tasks;  // one class only in the rows read: no probe to fit
  struct Task {
    std::string name;
    double positive_fraction = 0;
    double prior_loss = 0;          // the constant probe (the label entropy)
    int64_t best_latent = -1;
    double latent_loss = 0;         // best 1-d probe on a latent's pre-activation
    int64_t best_channel = -1;
    double channel_loss = 0;        // best 1-d probe on a raw input channel (the baseline)
  };
  int64_t rows = 0;
  double mean_latent_loss = 0;
  double mean_channel_loss = 0;
  double mean_prior_loss = 0;
  std::vector<Task> tasks;
};

struct ShrinkageSummary {
  int64_t tokens = 0;
  int64_t iterations = 0;
  double mean_ratio = 0;   // refined / original activation sums: > 1 means the SAE shrinks them
  double fvu_before = 0;
  double fvu_after = 0;
};

struct ComparisonSummary {
  std::string other_checkpoint;
  int64_t other_latents = 0;
  int64_t latents = 0;
  double threshold = 0.7;
  double novel_fraction = 0;
  double reconstruction_fraction = 0;
  double mean_max_cosine = 0;
  std::vector<int64_t> max_cosine_histogram;  // 20 bins on [-1, 1]
};

struct SuiteReport {
  std::vector<std::string> ran;          // in order
  std::vector<double> seconds;           // per evaluation, as `ran`
  std::string split = "held_out";        // or "training_sample" when the data has no held-out part
  // Evaluations that failed, with their errors: the others' figures stand.
  std::vector<std::pair<std::string, std::string>> failed;
  std::string error;                     // the whole suite failed (the trainer records it here)
  std::optional<DownstreamLoss> downstream_loss;
  std::optional<AblationSparsity> ablation_sparsity;
  std::optional<N2GSummary> n2g;
  std::optional<TokenStatisticsSummary> token_stats;
  std::optional<TopExamplesSummary> top_examples;
  std::optional<ProbeSummary> probes;
  std::optional<ShrinkageSummary> shrinkage;
  std::optional<ComparisonSummary> sae_comparison;
};

struct SuiteInputs {
  const TrainConfig* config = nullptr;   // data and evaluation sections
  ModelConfig model;                     // the SAE's (input scale included)
  const SaeParameters* params = nullptr; // the published weights, on `device`
  torch::Device device = torch::kCPU;
  // Held-out activation rows (raw) when the caller has them (the trainer does), and which split
  // they are; else the suite opens the data source for shrinkage.
  torch::Tensor eval_rows;
  std::string eval_rows_split = "held_out";
  // Called as evaluations start and progress (name, fraction of that evaluation done).
  std::function<void(const std::string&, double)> progress;
};

// Runs `names` (each one of EvaluationNames(); an unknown name, or one whose prerequisites the
// config lacks (MissingForEvaluation), is an error naming it) and returns their figures. An
// evaluation that fails (its data, or an exception) is recorded in `failed` with its error, and
// the others still run.
absl::StatusOr<SuiteReport> RunEvaluationSuite(const SuiteInputs& inputs, const std::vector<std::string>& names);

// The report as JSON (evaluation.json's "evaluations" object; the top examples file apart).
nlohmann::json SuiteReportToJson(const SuiteReport& report);
std::string FormatSuiteTable(const SuiteReport& report);

}  // namespace saegrid
