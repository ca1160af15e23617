// The names of the papers' evaluations (evaluation.run, `saegrid eval --only`), in the order a
// suite runs them, and which need a language model. Header-only and free of LibTorch, so that the
// job spec's validation (linked into the client) and the suite (engine/eval/suite.h) share one list.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "engine/config.h"

namespace saegrid {

inline const std::vector<std::string>& EvaluationNames() {
  static const std::vector<std::string> kNames = {"downstream_loss", "ablation_sparsity", "token_stats",
                                                  "top_examples",    "n2g",               "probes",
                                                  "shrinkage",       "sae_comparison"};
  return kNames;
}

inline bool IsEvaluationName(const std::string& name) {
  const auto& all = EvaluationNames();
  return std::find(all.begin(), all.end(), name) != all.end();
}

// Those that run the model again over held-out sequences (data.language_model).
inline bool EvaluationNeedsLanguageModel(const std::string& name) {
  return name == "downstream_loss" || name == "ablation_sparsity" || name == "token_stats" ||
         name == "top_examples" || name == "n2g";
}

// What evaluation `name` needs and `config` lacks: the field to set ("data.language_model",
// "evaluation.compare_checkpoint", "evaluation.probes.labels_path",
// "evaluation.probes.activations_path"), or "" when it can run.
inline std::string MissingForEvaluation(const std::string& name, const TrainConfig& config) {
  if (EvaluationNeedsLanguageModel(name) && !config.data.uses_language_model()) return "data.language_model";
  if (name == "sae_comparison" && config.evaluation.compare_checkpoint.empty()) return "evaluation.compare_checkpoint";
  if (name == "probes" && !config.data.use_synthetic) {
    const auto& probes = config.evaluation.probes;
    if (probes.labels_path.empty()) return "evaluation.probes.labels_path";  // only synthetic data labels itself
    // The labels describe activation rows: data.path's unless they name their own.
    if (probes.activations_path.empty() && config.data.path.empty()) return "evaluation.probes.activations_path";
  }
  return "";
}

}  // namespace saegrid
