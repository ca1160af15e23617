// The one durable file writer: a file that must survive a crash is written under a temporary
// name in its directory, fsynced, renamed into place, and the directory fsynced, so that a
// reader (or a restart) sees the whole old file or the whole new one, never part of one.
// Every error names the path and the system call; callers must check it.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace saegrid {

// Writes `contents` to `path` durably (temporary "<path>.tmp.<pid>", fsync, rename, fsync of the
// directory). On error the temporary file is removed and `path` is unchanged.
absl::Status WriteFileDurably(const std::string& path, const std::string& contents);

// Moves the complete file `temp_path` to `final_path` durably: fsync `temp_path`, rename, fsync
// the directory of `final_path`. Both must be on the same filesystem.
absl::Status CommitFile(const std::string& temp_path, const std::string& final_path);

}  // namespace saegrid
