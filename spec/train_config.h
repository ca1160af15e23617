// Validates a saegrid.v1.JobSpec and maps it onto the engine's TrainConfig. Every rejected value
// is reported with its dotted field name and the rule it breaks.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "saegrid/v1/job_spec.pb.h"

namespace saegrid {

// Bounds on spec values, so that a typo cannot ask for an absurd allocation.
inline constexpr int64_t kMaxLatents = int64_t{1} << 26;
inline constexpr int64_t kMaxDimension = int64_t{1} << 16;
inline constexpr int64_t kMaxBatchSize = int64_t{1} << 20;

absl::StatusOr<TrainConfig> ToTrainConfig(const v1::JobSpec& spec);

// A YAML or JSON job spec file read (spec/job_spec_loader.h) and mapped, for the commands that take
// --config: errors read "invalid config: <the loader's error>" or "invalid config <path>: <field>: ...".
absl::StatusOr<TrainConfig> LoadTrainConfigFile(const std::string& path);

}  // namespace saegrid
