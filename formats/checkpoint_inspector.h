// Checks an uploaded checkpoint archive (formats/checkpoint_archive.h) without extracting it and
// without LibTorch: the coordinator calls this before it records an upload, so that a checkpoint
// that a later resume or download would choke on is refused at the door, with the entry named.
// Memory is bounded: only the JSON files (each at most a few MiB) and safetensors headers (at
// most kMaxInspectedHeaderBytes) are read, never tensor data.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace saegrid {

inline constexpr int64_t kMaxInspectedHeaderBytes = 1 << 20;  // per safetensors header
inline constexpr int64_t kMaxInspectedJsonBytes = 1 << 20;    // cfg.json, evaluation.json

struct CheckpointSummary {
  int64_t step = 0, tokens = 0;
  std::string hookpoint;
  int64_t d_in = 0, num_latents = 0, k = 0;
  std::string architecture;
  bool has_evaluation = false;
};

// Validates the archive (ListArchive) and its one top-level directory "step_<N>" (N = the step
// in trainer_state.json), then requires:
//  - trainer_state.json, valid by ParseTrainerState;
//  - every state slice it lists, whose safetensors header holds, for rows = its latent count and
//    d = d_in: params.{W_enc [rows, d], b_enc [rows], W_dec [rows, d], b_pre [d]} in F32 (and
//    log_threshold [rows] for jumprelu), the same under adam.exp_avg. and adam.exp_avg_sq. (and
//    ema. when has_ema), and dead.tokens_since_fired [rows] in I64 (as engine/checkpoint.cc
//    WriteStateSlice writes);
//  - sparsify/ (the sparsify run directory), when present, holds only directories, each with
//    cfg.json and sae.safetensors;
//  - the sparsify export of the hookpoint, sparsify/<hookpoint>/ (or <hookpoint>/ in checkpoints
//    written before the run directory existed), required for topk and checked wherever present:
//    cfg.json a JSON object whose d_in, num_latents and k match, and sae.safetensors with
//    encoder.weight [n, d], encoder.bias [n], W_dec [n, d], b_dec [d] in one floating dtype;
//  - the SAELens export saelens/, required without a sparsify export (every architecture but
//    topk) and checked wherever present: cfg.json a JSON object with the architecture the trained
//    one is exported as ("topk"; "standard" for relu; "jumprelu" for jumprelu, batchtopk and
//    matryoshka) and d_in, d_sae matching; sae_weights.safetensors with W_enc [d, n], b_enc [n],
//    W_dec [n, d], b_dec [d] (and threshold [n] for "jumprelu") in one floating dtype;
//  - when present: saelens/sparsity.safetensors with sparsity [n]; evaluation.json a JSON object;
//  - every other *.safetensors entry a valid header.
// Errors name the archive and the entry (and the tensor or field).
absl::StatusOr<CheckpointSummary> InspectCheckpointArchive(const std::string& archive_path);

}  // namespace saegrid
