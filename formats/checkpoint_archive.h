// A checkpoint directory as one file, for upload and download: a POSIX ustar archive (readable
// with `tar -xf`) of the step directory, regular files and directories only. No LibTorch: the
// coordinator and the worker daemons use it, and the fuzzers link it alone.
//
// Reading is two steps: ListArchive validates every header of the archive (checksums, names,
// types, sizes, offsets, the end marker) before anything is read or written, so that a caller can
// inspect an upload without extracting it, and UnpackArchive never writes part of a bad archive.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace saegrid {

// Bounds on what ListArchive accepts (a checkpoint has a few files per latent shard).
inline constexpr int64_t kMaxArchiveEntries = 65536;
inline constexpr size_t kMaxArchiveNameBytes = 256;

struct ArchiveEntry {
  std::string name;         // relative path, '/'-separated, no trailing '/', no "." or ".."
  int64_t size = 0;         // bytes of a regular file; 0 for a directory
  int64_t data_offset = 0;  // where the file's bytes start in the archive
  bool is_directory = false;
};

// Writes `dir` (e.g. .../checkpoints/step_000000100) to `archive_path`; entries are named
// "<basename of dir>/<relative path>", in sorted order. Symbolic links and special files under
// `dir` are skipped.
absl::Status PackDirectory(const std::string& dir, const std::string& archive_path);

// The entries of the archive, in archive order, after validating all of it: every header's
// checksum; names that are relative, free of "..", ".", empty components and control characters,
// unique, and never below a regular file; types regular file or directory only; sizes whose bytes
// lie inside the file; the end-of-archive block present. Errors name the archive and the entry
// (or the byte offset of a header that has no readable name). `archive_path` must be a regular
// file.
absl::StatusOr<std::vector<ArchiveEntry>> ListArchive(const std::string& archive_path);

// The bytes of the regular file `entry` (from ListArchive of the same archive); an error, and
// nothing read, when the entry is larger than `max_bytes`.
absl::StatusOr<std::string> ReadArchiveEntry(const std::string& archive_path, const ArchiveEntry& entry,
                                             int64_t max_bytes);

// Bytes [offset, offset + length) of the regular file `entry`, clipped to its end (a header read
// of a large file without reading the rest).
absl::StatusOr<std::string> ReadArchiveEntryRange(const std::string& archive_path,
                                                  const ArchiveEntry& entry, int64_t offset,
                                                  int64_t length);

// Extracts `archive_path` under `dest_dir` (created if missing). The whole archive is listed and
// validated first (ListArchive), so a malformed archive writes nothing; an entry whose path under
// `dest_dir` already passes through a symbolic link is refused, so that nothing is written outside
// `dest_dir`. Existing files of the same names are replaced.
absl::Status UnpackArchive(const std::string& archive_path, const std::string& dest_dir);

}  // namespace saegrid
