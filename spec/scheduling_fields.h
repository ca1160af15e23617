// Bounds on the fields only the service reads (name, priority, labels, max_restarts, deadline),
// checked by the coordinator on SubmitJob next to ToTrainConfig.
#pragma once

#include "absl/status/status.h"
#include "saegrid/v1/job_spec.pb.h"

namespace saegrid {

inline constexpr int kMaxLabels = 32;
inline constexpr int kMaxLabelKeyLength = 63;
inline constexpr int kMaxLabelValueLength = 256;
inline constexpr int kMaxNameLength = 256;
inline constexpr int kMaxPriority = 1000;
inline constexpr int kMaxRestarts = 100;

absl::Status ValidateSchedulingFields(const v1::JobSpec& spec);

}  // namespace saegrid
