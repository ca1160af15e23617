// Failures a caller must tell apart from others of the same absl::StatusCode, marked by a
// status payload (a type URL), never recognised by their message text. Header-only, so that the
// engine uses it without linking saegrid_base.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace saegrid {

// The checkpoint to resume from could not be restored (saegrid-train exit code 4).
inline constexpr char kRestoreFailedTypeUrl[] = "saegrid/restore-failed";
// An allocation failed (saegrid-train exit code 5).
inline constexpr char kOutOfMemoryTypeUrl[] = "saegrid/out-of-memory";

// `status` (not OK) marked as a failed restore; code and message are kept.
inline absl::Status MarkRestoreFailure(absl::Status status) {
  if (!status.ok()) status.SetPayload(kRestoreFailedTypeUrl, absl::Cord());
  return status;
}

inline bool IsRestoreFailure(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kRestoreFailedTypeUrl).has_value();
}

// RESOURCE_EXHAUSTED "out of memory: <what>", marked as an allocation failure.
inline absl::Status OutOfMemoryError(absl::string_view what) {
  absl::Status status = absl::ResourceExhaustedError(absl::StrCat("out of memory: ", what));
  status.SetPayload(kOutOfMemoryTypeUrl, absl::Cord());
  return status;
}

inline bool IsOutOfMemory(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kOutOfMemoryTypeUrl).has_value();
}

}  // namespace saegrid
