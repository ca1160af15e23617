#include "spec/scheduling_fields.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace saegrid {
namespace {

bool LabelKeyChar(char c) { return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '/'; }

}  // namespace

absl::Status ValidateSchedulingFields(const v1::JobSpec& spec) {
  if (spec.name().size() > kMaxNameLength) {
    return absl::InvalidArgumentError(absl::StrCat("name: longer than ", kMaxNameLength, " characters"));
  }
  if (spec.priority() < -kMaxPriority || spec.priority() > kMaxPriority) {
    return absl::InvalidArgumentError(
        absl::StrCat("priority: must be in [", -kMaxPriority, ", ", kMaxPriority, "], got ", spec.priority()));
  }
  if (spec.max_restarts() < 0 || spec.max_restarts() > kMaxRestarts) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_restarts: must be in [0, ", kMaxRestarts, "], got ", spec.max_restarts()));
  }
  if (spec.deadline_seconds() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("deadline_seconds: must be >= 0, got ", spec.deadline_seconds()));
  }
  if (spec.resources().min_memory_bytes() < 0) {
    return absl::InvalidArgumentError("resources.min_memory_bytes: must be >= 0");
  }
  if (spec.labels_size() > kMaxLabels) {
    return absl::InvalidArgumentError(absl::StrCat("labels: at most ", kMaxLabels, " labels, got ", spec.labels_size()));
  }
  for (const auto& [key, value] : spec.labels()) {
    if (key.empty() || key.size() > kMaxLabelKeyLength) {
      // Not echoed whole: the key may be megabytes long.
      return absl::InvalidArgumentError(absl::StrCat("labels: key '", key.substr(0, kMaxLabelKeyLength), "'",
                                                     key.size() > kMaxLabelKeyLength ? "..." : "", " must have 1 to ",
                                                     kMaxLabelKeyLength, " characters"));
    }
    for (char c : key) {
      if (!LabelKeyChar(c)) {
        return absl::InvalidArgumentError(
            absl::StrCat("labels: key '", key, "' may hold only letters, digits, '-', '_', '.' and '/'"));
      }
    }
    if (value.size() > kMaxLabelValueLength) {
      return absl::InvalidArgumentError(
          absl::StrCat("labels.", key, ": value longer than ", kMaxLabelValueLength, " characters"));
    }
  }
  return absl::OkStatus();
}

}  // namespace saegrid
