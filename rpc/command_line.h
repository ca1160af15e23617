// What the daemons' main() functions share: the flag parser (base/flags.h, re-exported here for
// the callers that name it rpc::), port files, and termination signals.
#pragma once

#include <signal.h>

#include <string>

#include "absl/status/status.h"
#include "base/flags.h"

namespace saegrid::rpc {

using saegrid::FlagSpec;
using saegrid::ParseFlags;
using saegrid::ParseSeconds;

// Writes `contents` to `path` durably (base/durable_file.h), so that a reader polling for the
// file (a port file) never sees it half written. The error names the path; check it.
[[nodiscard]] absl::Status WriteFileAtomically(const std::string& path, const std::string& contents);

// Blocks SIGINT and SIGTERM in the calling thread and in every thread it starts afterwards, so
// that a daemon takes them with sigwait on the returned set. Call it first in main: gRPC starts
// threads as soon as credentials are made.
sigset_t BlockTerminationSignals();

}  // namespace saegrid::rpc
