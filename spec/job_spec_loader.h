// Reads a job specification from YAML or JSON into the saegrid.v1.JobSpec message. Unknown and
// ill-typed fields are rejected with the dotted path of the field ("model.kk: unknown field").
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "saegrid/v1/job_spec.pb.h"

namespace saegrid {

// Parses YAML (a superset of JSON, so JSON text works too). `source` names the input in errors.
absl::StatusOr<v1::JobSpec> ParseJobSpec(const std::string& text, const std::string& source);
absl::StatusOr<v1::JobSpec> LoadJobSpecFile(const std::string& path);

}  // namespace saegrid
