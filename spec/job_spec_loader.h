// Reads a job specification from YAML or JSON into the saegrid.v1.JobSpec message. Unknown and
// ill-typed fields are rejected with the dotted path of the field ("model.kk: unknown field").
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "saegrid/v1/job_spec.pb.h"

namespace saegrid {

// Bounds on a job specification, far above any real one (a few hundred nodes, a few KiB). The
// node bound counts the document as expanded: a YAML alias counts as a copy of what it names, so
// that a "billion laughs" document (aliases of aliases) is refused after at most this much work.
inline constexpr int64_t kMaxJobSpecBytes = 1 << 20;
inline constexpr int64_t kMaxJobSpecNodes = 10000;
inline constexpr int kMaxJobSpecDepth = 32;

// Parses YAML (a superset of JSON, so JSON text works too). `source` names the input in errors.
// Text longer than kMaxJobSpecBytes, nested deeper than kMaxJobSpecDepth, or expanding to more
// than kMaxJobSpecNodes nodes is refused.
absl::StatusOr<v1::JobSpec> ParseJobSpec(const std::string& text, const std::string& source);
// Reads a regular file of at most kMaxJobSpecBytes (checked before reading) and parses it.
absl::StatusOr<v1::JobSpec> LoadJobSpecFile(const std::string& path);

}  // namespace saegrid
