// GPT-2 (model_type "gpt2"): learned position embeddings, pre-LayerNorm blocks, fused QKV and MLP
// projections stored as Conv1D weights ([in, out]: y = x W + b), GELU (tanh approximation unless
// the config says "gelu"), and the LM head tied to the token embeddings.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/lm/hf_checkpoint.h"
#include "engine/lm/language_model.h"

namespace saegrid {

absl::StatusOr<std::unique_ptr<LanguageModel>> LoadGpt2(const HfCheckpoint& checkpoint, torch::Device device);

}  // namespace saegrid
