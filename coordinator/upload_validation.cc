#include "coordinator/upload_validation.h"

#include "absl/strings/str_cat.h"
#include "engine/activation/architecture_names.h"
#include "formats/checkpoint_inspector.h"

namespace saegrid::coordinator {

absl::Status ValidateUploadedCheckpoint(const std::string& archive_path, const UploadExpectation& expected) {
  auto summary = InspectCheckpointArchive(archive_path);
  if (!summary.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("the upload is not a valid checkpoint archive: ",
                                                   summary.status().message()));
  }
  const auto mismatch = [](const char* what, const auto& got, const auto& want) {
    return absl::InvalidArgumentError(
        absl::StrCat("the uploaded checkpoint's ", what, " is ", got, ", the job's is ", want));
  };
  if (summary->step != expected.step) return mismatch("step", summary->step, expected.step);
  if (summary->tokens != expected.tokens) return mismatch("token count", summary->tokens, expected.tokens);
  if (expected.d_in > 0 && summary->d_in != expected.d_in) return mismatch("d_in", summary->d_in, expected.d_in);
  if (expected.num_latents > 0 && summary->num_latents != expected.num_latents) {
    return mismatch("num_latents", summary->num_latents, expected.num_latents);
  }
  // relu and jumprelu record k but ignore it, so only the architectures that use k must match it.
  const auto architecture = ParseArchitecture(expected.architecture);
  if (architecture && ArchitectureUsesK(*architecture) && summary->k != expected.k) {
    return mismatch("k", summary->k, expected.k);
  }
  if (!expected.architecture.empty() && summary->architecture != expected.architecture) {
    return mismatch("architecture", summary->architecture, expected.architecture);
  }
  if (!expected.hookpoint.empty() && summary->hookpoint != expected.hookpoint) {
    return mismatch("hookpoint", summary->hookpoint, expected.hookpoint);
  }
  return absl::OkStatus();
}

}  // namespace saegrid::coordinator
