#include "engine/lm/language_model.h"

#include "absl/strings/str_cat.h"
#include "engine/lm/gpt2.h"
#include "engine/lm/hf_checkpoint.h"

namespace saegrid {

absl::StatusOr<std::unique_ptr<LanguageModel>> LoadLanguageModel(const std::string& dir, torch::Device device) {
  auto checkpoint = HfCheckpoint::Open(dir);
  if (!checkpoint.ok()) return checkpoint.status();
  const std::string type = (*checkpoint)->model_type();
  if (type == "gpt2") return LoadGpt2(**checkpoint, device);
  return absl::InvalidArgumentError(absl::StrCat("model ", dir, ": model_type \"", type,
                                                 "\" is not supported (supported: gpt2)"));
}

}  // namespace saegrid
