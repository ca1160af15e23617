// The Llama family (model_type "llama", "qwen2", "mistral"; SmolLM is "llama"): RMSNorm blocks,
// rotary embeddings over each head's dimensions (rope_theta), grouped-query attention
// (num_key_value_heads), SwiGLU MLPs, q/k/v biases where the weights have them (Qwen2), and an LM
// head that may be tied to the embeddings. rope_scaling is refused, not ignored.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/lm/hf_checkpoint.h"
#include "engine/lm/language_model.h"

namespace saegrid {

absl::StatusOr<std::unique_ptr<LanguageModel>> LoadLlama(const HfCheckpoint& checkpoint, torch::Device device);

}  // namespace saegrid
