// A checkpoint directory as one file, for upload and download: a POSIX ustar archive (readable
// with `tar -xf`) of the step directory, regular files and directories only. No LibTorch.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace saegrid {

// Writes `dir` (e.g. .../checkpoints/step_000000100) to `archive_path`; entries are named
// "<basename of dir>/<relative path>".
absl::Status PackDirectory(const std::string& dir, const std::string& archive_path);

// Extracts `archive_path` under `dest_dir`. Rejects absolute names, "..", links and devices, so
// that an archive cannot write outside dest_dir; names the entry on error.
absl::Status UnpackArchive(const std::string& archive_path, const std::string& dest_dir);

}  // namespace saegrid
