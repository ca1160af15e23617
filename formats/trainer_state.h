// trainer_state.json of a checkpoint step directory (written by engine/checkpoint.cc
// FinishCheckpoint): parsed and validated without LibTorch, for resume (engine LoadCheckpoint),
// for the coordinator's check of an uploaded checkpoint, and for fuzzing. A value that could send
// a resumed run somewhere wrong (a negative step, latents the slices do not cover, a file name
// with a '/') is an error naming the file and the field, never a default.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace saegrid {

inline constexpr int kTrainerStateFormatVersion = 1;
// trainer_state.json is a few hundred bytes per state slice; larger files are refused unread.
inline constexpr int64_t kMaxTrainerStateBytes = 4 << 20;
// Bounds that keep every derived size (rows x d_in x 4 bytes) far inside int64. The job spec's
// own bounds (spec/train_config.h) are tighter; these only guard arithmetic on untrusted files.
inline constexpr int64_t kMaxTrainerStateDimension = int64_t{1} << 24;
inline constexpr int64_t kMaxTrainerStateLatents = int64_t{1} << 32;

// The step directory's export directories (engine/checkpoint.h): the sparsify run directory
// (one sub-directory per hookpoint, TopK only) and the SAELens export.
inline constexpr char kSparsifyRunDirName[] = "sparsify";
inline constexpr char kSaeLensDirName[] = "saelens";

// The "model" object (engine ModelConfigToJson; the fields of engine/config.h ModelConfig).
// Fields the writer has always written are required; the others take the engine's defaults when
// absent, so that checkpoints written before they existed still load.
struct TrainerStateModel {
  std::string architecture;  // a name of engine/activation/architecture_names.h
  int64_t d_in = 0, num_latents = 0;
  int64_t k = 0;  // absent: 0 (only for architectures without k: relu, jumprelu)
  int64_t k_aux = 0;  // 0: derived from d_in
  double auxk_alpha = 1.0 / 32.0;
  int64_t dead_tokens_threshold = 10'000'000;
  double l1_coefficient = 1e-3;
  std::string normalize_inputs = "none";  // "none", "layer_norm" or "dataset_constant"
  double input_scale = 1.0;               // dataset_constant's fitted constant
  int64_t k_initial = 0, k_schedule_steps = 0;  // the k schedule (0, 0: none)
  double threshold_decay = 0.99;
  double inference_threshold = -1;  // BatchTopK, Matryoshka; < 0: not fitted yet
  double jumprelu_initial_threshold = 0.001;
  double jumprelu_bandwidth = 0.001;
  double l0_coefficient = 1e-3;
  double target_l0 = 0;
  std::vector<int64_t> matryoshka_prefixes;  // empty: the engine's default prefixes
};

struct TrainerStateSlice {
  std::string file;  // a plain file name in the step directory
  int64_t latent_begin = 0, latent_end = 0;
};

struct TrainerStateRecord {
  int format_version = kTrainerStateFormatVersion;
  int64_t step = 0, tokens = 0;
  int64_t cursor_epoch = 0, cursor_offset = 0;  // data_cursor
  int64_t adam_step = 0, ema_updates = 0;
  bool has_ema = false;
  int64_t overflow_tokens = 0;
  std::string published_weights = "raw";  // "raw" or "ema"
  std::string hookpoint;
  int64_t shards = 1, replicas = 1;  // parallelism
  std::vector<TrainerStateSlice> state_slices;  // tile [0, model.num_latents) in order
  TrainerStateModel model;
};

// Parses trainer_state.json text. Rules: a JSON object; format_version 1; step, tokens,
// data_cursor.{epoch, offset}, adam_step, ema_updates, overflow_tokens integers >= 0; tokens >=
// step (every step trains at least one token); adam_step <= step; ema_updates <= step, and 0
// without EMA; published_weights "ema" only with has_ema; hookpoint a plain directory name;
// parallelism.{shards, replicas} >= 1; state_slices non-empty, each {file, latent_begin,
// latent_end} with a plain *.safetensors file name, distinct, tiling [0, num_latents) in order
// (absent: the single "trainer_state.safetensors" of a one-process run); model as
// ParseTrainerStateModel. Unknown top-level fields are ignored (additions within version 1).
// Errors read "<what>: <field>: <problem>", e.g. "…/trainer_state.json: step: must be >= 0, got -5".
absl::StatusOr<TrainerStateRecord> ParseTrainerState(std::string_view text, std::string_view what);

// Reads and parses the file at `path` (at most kMaxTrainerStateBytes; errors name the path).
absl::StatusOr<TrainerStateRecord> ReadTrainerStateFile(const std::string& path);

// Validates the "model" object: architecture one of ArchitectureChoices(); 1 <= d_in <=
// kMaxTrainerStateDimension; 1 <= num_latents <= kMaxTrainerStateLatents; k: with an
// architecture that uses it (topk, batchtopk, matryoshka) required and 1 <= k <= num_latents,
// otherwise optional and ignored beyond being an integer >= 0; k_aux >= 0; auxk_alpha,
// l1_coefficient, l0_coefficient finite and >= 0; dead_tokens_threshold >= 0; normalize_inputs
// "none", "layer_norm" or "dataset_constant"; input_scale > 0; k_initial 0 or in [k, num_latents];
// k_schedule_steps >= 0; threshold_decay in [0, 1]; inference_threshold finite (< 0: not fitted);
// jumprelu_initial_threshold >= 0; jumprelu_bandwidth > 0; target_l0 in [0, num_latents];
// matryoshka_prefixes an array of integers, strictly increasing, each in [1, num_latents - 1].
// Every field but architecture, d_in, num_latents (and k where it applies) may be absent and takes
// the engine's default. `what` prefixes errors ("<what>: model.k: ...").
absl::StatusOr<TrainerStateModel> ParseTrainerStateModel(const nlohmann::json& model, std::string_view what);

// Whether `name` is a plain file or directory name: non-empty, at most 255 bytes, not "." or
// "..", without '/', '\\' or control characters.
bool IsPlainFileName(std::string_view name);

}  // namespace saegrid
