// Files that must survive a crash: written under a temporary name, fsynced, renamed into place,
// and the directory fsynced, so that a reader sees the whole file or none of it.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace saegrid::coordinator {

// Moves the complete file `temp_path` to `final_path` durably.
absl::Status CommitFile(const std::string& temp_path, const std::string& final_path);

}  // namespace saegrid::coordinator
