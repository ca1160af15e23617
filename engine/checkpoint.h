// Checkpoints: one directory per step under <output_dir>/checkpoints/, written under a temporary
// name and renamed when complete, with LATEST naming the newest.
//
//   step_000000100/
//     sparsify/<hookpoint>/cfg.json, sae.safetensors       EleutherAI sparsify layout (TopK only)
//     saelens/cfg.json, sae_weights.safetensors, sparsity.safetensors   SAELens v6 export
//     trainer_state.json, trainer_state.safetensors      everything resume needs
//       (a sharded run writes one trainer_state.shard-SSSSS-of-TTTTT.safetensors per latent
//       shard instead; trainer_state.json lists the slices and their latent ranges)
//     evaluation.json                                     when the step was evaluated
//     top_examples.json                                   when evaluation.run had top_examples
//
// sparsify/ is a sparsify run directory: it holds only hookpoint directories, because sparsify's
// whole-run loader (SparseCoder.load_many) takes every sub-directory for one. It is written only
// for TopK, the one architecture sparsify's config parser accepts ("activation": "topk"). The
// SAELens export is per architecture: TopK as "topk" with k, ReLU as "standard", JumpReLU as
// "jumprelu" with its thresholds, BatchTopK and Matryoshka as "jumprelu" with every threshold at
// the fitted inference threshold (as SAELens and dictionary_learning export BatchTopK); its
// cfg.json "metadata" records the architecture trained and the evaluation's L0 and dead count.
// checkpoint.export_saelens = false leaves the SAELens export out for TopK only: for the other
// architectures it is the only export, so it is always written.
//
// Checkpoints written before the sparsify run directory existed hold the sparsify layout at
// <hookpoint>/ (ReLU's too, with "activation": "relu"); the readers here accept both layouts.
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

// The trainer state of the latents [latent_begin, latent_end): rows of W_enc, b_enc, W_dec (and
// JumpReLU's log_threshold), their moments, EMA and dead counters (b_pre and its moments are
// whole in every slice).
struct TrainerState {
  int64_t latent_begin = 0;
  int64_t latent_end = 0;
  int64_t step = 0;
  int64_t tokens = 0;
  DataCursor cursor;
  std::vector<torch::Tensor> adam_exp_avg, adam_exp_avg_sq;  // in SaeParameters::Names() order
  int64_t adam_step = 0;
  torch::Tensor tokens_since_fired;
  std::vector<torch::Tensor> ema_shadow;  // empty without EMA
  int64_t ema_updates = 0;
  torch::Tensor rng_state;  // LibTorch's default CPU generator
  int64_t overflow_tokens = 0;  // capacity overflows so far (sharded runs): possibly truncated
  int64_t truncated_tokens = 0;  // ... and truncated (written and read as "truncated_tokens")
};

struct StateSliceInfo {
  std::string file;
  int64_t latent_begin = 0;
  int64_t latent_end = 0;
};

struct CheckpointContents {
  ModelConfig model;
  std::string hookpoint = "sae";
  // Applies to TopK only: every other architecture's SAELens export is its only export.
  bool export_saelens = true;
  // Where the activations came from, recorded in the SAELens metadata.
  std::string dataset_path;
  std::string model_name;   // the language model (its directory's name); "" for activation files
  std::string hook_name;    // TransformerLens form; "" when unknown
  int64_t context_size = 0;
  SaeParameters raw;
  SaeParameters published;
  bool published_is_ema = false;
  TrainerState state;  // the scalars; FinishCheckpoint ignores its tensors
  std::vector<StateSliceInfo> slices;  // written with WriteStateSlice before FinishCheckpoint
  int64_t shards = 1, replicas = 1;    // the layout that wrote it (informational)
  const EvalResult* evaluation = nullptr;
};

struct LoadedCheckpoint {
  std::string dir;
  ModelConfig model;
  SaeParameters raw;
  TrainerState state;
};

// Writes the step directory of a single process (one state slice); returns its path.
absl::StatusOr<std::string> WriteCheckpoint(const std::string& output_dir,
                                            const CheckpointContents& contents);

// The steps of a checkpoint written by several ranks: one rank begins it (a fresh temporary
// directory), every shard writes its state slice into it, and that rank finishes it (published
// weights, trainer_state.json, rename, LATEST).
std::string CheckpointTempDir(const std::string& output_dir, int64_t step);
absl::Status BeginCheckpoint(const std::string& output_dir, int64_t step);
std::string StateSliceFileName(int64_t shard, int64_t shards);
absl::Status WriteStateSlice(const std::string& temp_dir, const std::string& file,
                             const SaeParameters& raw, const TrainerState& state);
absl::StatusOr<std::string> FinishCheckpoint(const std::string& output_dir,
                                             const CheckpointContents& contents);
// The newest complete step directory under output_dir, or "" when there is none.
absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& output_dir);
// The model configuration a checkpoint was written for (trainer_state.json only, validated whole).
absl::StatusOr<ModelConfig> ReadCheckpointModel(const std::string& step_dir);

// Loads the state of latents [latent_begin, latent_end) (latent_end < 0: all of them) from
// whichever slices hold them, so that a checkpoint resumes into any shard layout. trainer_state.json
// is validated first (formats/trainer_state.h: a negative step, slices that do not tile the
// latents, ... are errors naming the file and the field).
absl::StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& step_dir, int64_t latent_begin = 0,
                                                int64_t latent_end = -1);
// Removes all but the newest `keep_last` step directories (keep_last <= 0 keeps all).
absl::Status PruneCheckpoints(const std::string& output_dir, int64_t keep_last);

// Where a step directory's exports lie (the layout above).
std::string SparsifyExportDir(const std::string& step_dir, const std::string& hookpoint);
std::string SaeLensExportDir(const std::string& step_dir);

// Reads a sparsify-layout SAE (<dir>/cfg.json + <dir>/sae.safetensors) as float32 parameters;
// `config` receives what cfg.json states ("activation" "topk", or "relu" as older checkpoints
// wrote it).
absl::StatusOr<SaeParameters> LoadSparsifySae(const std::string& dir, ModelConfig* config);

// Reads a SAELens export (<dir>/cfg.json + <dir>/sae_weights.safetensors) as float32 parameters
// (W_enc back to [n, d]); `config` receives what cfg.json states: "topk" (with k), "standard"
// (ReLU), "jumprelu" (log_threshold = log of the "threshold" tensor), or, for "jumprelu" with
// metadata.trained_architecture "batchtopk" or "matryoshka", that architecture with its
// inference_threshold (the thresholds' value), k and prefixes from the metadata and no
// log_threshold. Units are the export's: raw activations, no input scale.
absl::StatusOr<SaeParameters> LoadSaeLensSae(const std::string& dir, ModelConfig* config);

// The weights a checkpoint publishes (the EMA's when EMA was on), in the space the SAE was trained
// in: its model config (normalisation and input scale included) applies to raw inputs as it did in
// training. `path` is a step directory, or an output directory (its newest step). Read from the
// sparsify export when there is one (sparsify/<hookpoint>/, or <hookpoint>/ in older
// checkpoints), else from the SAELens export (with JumpReLU's log_threshold); the model config is
// trainer_state.json's. What the evaluations and a meta-SAE's data read.
struct PublishedSae {
  std::string step_dir;
  std::string hookpoint;
  int64_t step = 0;
  int64_t tokens = 0;
  ModelConfig model;
  SaeParameters params;
};
absl::StatusOr<PublishedSae> LoadPublishedSae(const std::string& path);

nlohmann::json ModelConfigToJson(const ModelConfig& config);
// The inverse, validated by ParseTrainerStateModel (formats/trainer_state.h).
absl::StatusOr<ModelConfig> ModelConfigFromJson(const nlohmann::json& j);

}  // namespace saegrid
