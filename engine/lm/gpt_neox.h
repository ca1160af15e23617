// GPT-NeoX (model_type "gpt_neox": the Pythia models): LayerNorm blocks whose attention and MLP
// read the same input and add in parallel (use_parallel_residual; sequential otherwise), a fused
// QKV projection laid out per head ([q k v] for each head in turn), rotary embeddings on the first
// rotary_pct of each head's dimensions, exact GELU, and an untied LM head (embed_out).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/lm/hf_checkpoint.h"
#include "engine/lm/language_model.h"

namespace saegrid {

absl::StatusOr<std::unique_ptr<LanguageModel>> LoadGptNeox(const HfCheckpoint& checkpoint, torch::Device device);

}  // namespace saegrid
