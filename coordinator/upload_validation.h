// What an uploaded checkpoint must be before the coordinator records it: a readable archive of
// one step directory whose trainer state and weights have the job's shape, at the step and token
// count its header claims. Random bytes with a matching SHA-256 are refused here.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace saegrid::coordinator {

// An upload larger than this is refused from its header (no real checkpoint comes near it).
inline constexpr int64_t kMaxCheckpointBytes = int64_t{1} << 40;

struct UploadExpectation {
  int64_t step = 0;
  int64_t tokens = 0;
  int64_t d_in = 0;         // 0: taken from the data, not checked
  int64_t num_latents = 0;  // 0: not checked
  int64_t k = 0;            // checked for the architectures that use k
  std::string architecture;  // a name of engine/activation/architecture_names.h; "": not checked
  std::string hookpoint;
};

// INVALID_ARGUMENT naming what does not match (or what is unreadable) in `archive_path`.
absl::Status ValidateUploadedCheckpoint(const std::string& archive_path, const UploadExpectation& expected);

}  // namespace saegrid::coordinator
