// Checkpoints: one directory per step under <output_dir>/checkpoints/, written under a temporary
// name and renamed when complete, with LATEST naming the newest.
//
//   step_000000100/
//     <hookpoint>/cfg.json, <hookpoint>/sae.safetensors   EleutherAI sparsify layout
//     saelens/cfg.json, sae_weights.safetensors, sparsity.safetensors   SAELens v6 export
//     trainer_state.json, trainer_state.safetensors      everything resume needs
//     evaluation.json                                     when the step was evaluated
//
// The published weights (sparsify, SAELens) are the EMA weights when EMA is on, else the raw
// weights; the trainer state always holds the raw weights and optimiser moments.
#pragma once

#include <torch/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/data/activation_stream.h"
#include "engine/evaluation.h"
#include "engine/sae_model.h"

namespace saegrid {

struct TrainerState {
  int64_t step = 0;
  int64_t tokens = 0;
  DataCursor cursor;
  std::vector<torch::Tensor> adam_exp_avg, adam_exp_avg_sq;  // in SaeParameters::Names() order
  int64_t adam_step = 0;
  torch::Tensor tokens_since_fired;
  std::vector<torch::Tensor> ema_shadow;  // empty without EMA
  int64_t ema_updates = 0;
  torch::Tensor rng_state;  // LibTorch's default CPU generator
};

struct CheckpointContents {
  ModelConfig model;
  std::string hookpoint = "sae";
  bool export_saelens = true;
  std::string dataset_path;  // recorded in SAELens metadata
  SaeParameters raw;
  SaeParameters published;
  bool published_is_ema = false;
  TrainerState state;
  const EvalResult* evaluation = nullptr;
};

struct LoadedCheckpoint {
  std::string dir;
  ModelConfig model;
  SaeParameters raw;
  TrainerState state;
};

// Writes the step directory; returns its path.
absl::StatusOr<std::string> WriteCheckpoint(const std::string& output_dir,
                                            const CheckpointContents& contents);
// The newest complete step directory under output_dir, or "" when there is none.
absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& output_dir);
absl::StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& step_dir);
// Removes all but the newest `keep_last` step directories (keep_last <= 0 keeps all).
absl::Status PruneCheckpoints(const std::string& output_dir, int64_t keep_last);

// Reads a sparsify-layout SAE (<dir>/cfg.json + <dir>/sae.safetensors) as float32 parameters;
// `config` receives what cfg.json states.
absl::StatusOr<SaeParameters> LoadSparsifySae(const std::string& dir, ModelConfig* config);

nlohmann::json ModelConfigToJson(const ModelConfig& config);
absl::StatusOr<ModelConfig> ModelConfigFromJson(const nlohmann::json& j);

}  // namespace saegrid
