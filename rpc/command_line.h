// Flag parsing for the daemons: "--name value" or "--name=value", every flag named in errors.
#pragma once

#include <signal.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace saegrid::rpc {

struct FlagSpec {
  std::string* value = nullptr;  // string flags
  bool* present = nullptr;       // boolean flags (no value)
};

// Fills the flags named in `flags`; positional arguments go to `positional` (error when null).
absl::Status ParseFlags(int argc, char** argv, const std::map<std::string, FlagSpec>& flags,
                        std::vector<std::string>* positional = nullptr);

// Writes `contents` to `path` through a temporary file and a rename, so that a reader polling for
// the file (a port file) never sees it half written.
void WriteFileAtomically(const std::string& path, const std::string& contents);

// Parses a duration flag given in seconds ("2", "0.5").
absl::Status ParseSeconds(const std::string& flag, const std::string& text, double* seconds);

// Blocks SIGINT and SIGTERM in the calling thread and in every thread it starts afterwards, so
// that a daemon takes them with sigwait on the returned set. Call it first in main: gRPC starts
// threads as soon as credentials are made.
sigset_t BlockTerminationSignals();

}  // namespace saegrid::rpc
