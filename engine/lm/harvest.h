// Cached activations: a language model run over a token file, the activations of one hookpoint
// written as shards (.npy with their token ids beside them, or .safetensors holding "activations"
// and "tokens") and a manifest that the training data path reads (data.path: <dir>/manifest.json). Shard i holds sequences [i S, (i+1) S) of the token
// file (S = sequences_per_shard), minus the excluded positions, so a shard's content depends only
// on its number: a harvest that was killed resumes by skipping the shards already written (each
// is written atomically) and redoes none of them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/lm/language_model.h"
#include "engine/lm/token_file.h"

namespace saegrid {

// One model batch: the hookpoint's activations at the positions of `ids` [n, T] (int64, CPU) that
// hold none of `excluded_ids`, as float32 rows on the CPU [kept, d_model], and their ids [kept].
// `device` is where the model is. The harvest and the on-the-fly source
// (engine/data/language_model_source.h) both make their rows with it.
struct KeptRows {
  torch::Tensor x;
  torch::Tensor tokens;
};
absl::StatusOr<KeptRows> ActivationsAtKeptPositions(const LanguageModel& model, const Hookpoint& hook,
                                                    const torch::Tensor& ids, const std::vector<int64_t>& excluded_ids,
                                                    torch::Device device);

struct HarvestOptions {
  std::string output_dir;
  Hookpoint hook;
  std::string model_description;       // recorded in harvest.json (e.g. the model directory)
  torch::Device device = torch::kCPU;  // where the model is: the token ids go there
  int64_t sequences_per_shard = 256;
  int64_t sequences_per_batch = 8;     // model batch
  int64_t max_sequences = 0;           // 0: the whole token file
  std::vector<int64_t> excluded_ids;   // positions holding these ids are left out (BOS, ...)
  // The shards' dtype: float32, float16, or bfloat16 (safetensors only: .npy has no bfloat16).
  torch::ScalarType dtype = torch::kFloat;
  enum class Format { kNpy, kSafetensors };
  Format format = Format::kNpy;
};

struct HarvestProgress {
  int64_t shards_total = 0;
  int64_t shards_done = 0;     // written now or found from an earlier run
  int64_t shards_skipped = 0;  // found from an earlier run
  int64_t sequences_done = 0;
  int64_t rows_written = 0;    // activation rows written by this run
};

// Runs the harvest; `on_shard` (optional) is called after each shard. An existing harvest.json
// that describes another harvest (model, hookpoint, context, shard size, exclusions, dtype) is
// an error rather than a mix of two harvests in one directory.
absl::StatusOr<HarvestProgress> HarvestActivations(const LanguageModel& model, const TokenFile& tokens,
                                                   const HarvestOptions& options,
                                                   const std::function<void(const HarvestProgress&)>& on_shard = nullptr);

}  // namespace saegrid
