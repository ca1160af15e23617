#include "engine/lm/language_model.h"

#include "absl/strings/str_cat.h"
#include "engine/lm/gpt2.h"
#include "engine/lm/gpt_neox.h"
#include "engine/lm/hf_checkpoint.h"
#include "engine/lm/llama.h"

namespace saegrid {

absl::StatusOr<std::unique_ptr<LanguageModel>> LoadLanguageModel(const std::string& dir, torch::Device device,
                                                                  const RandomWeights* random) {
  auto checkpoint = HfCheckpoint::Open(dir);
  if (!checkpoint.ok()) return checkpoint.status();
  if (random != nullptr) (*checkpoint)->set_random_weights(*random);
  const std::string type = (*checkpoint)->model_type();
  if (type == "gpt2") return LoadGpt2(**checkpoint, device);
  if (type == "gpt_neox") return LoadGptNeox(**checkpoint, device);
  if (type == "llama" || type == "qwen2" || type == "mistral") return LoadLlama(**checkpoint, device);
  return absl::InvalidArgumentError(absl::StrCat("model ", dir, ": model_type \"", type,
                                                 "\" is not supported (gpt2, gpt_neox, llama, qwen2, mistral)"));
}

}  // namespace saegrid
