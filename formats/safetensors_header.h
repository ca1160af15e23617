// The header of a safetensors file, parsed and validated
// from bytes alone: no LibTorch and no file access, so that the coordinator can check an uploaded
// checkpoint and a fuzzer can drive it. The engine's reader (engine/safetensors.h) maps the file
// and delegates the header to this.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace saegrid {

// Larger headers are refused (the reference implementation's own bound is 100 MB as well).
inline constexpr int64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsTensorInfo {
  std::string name, dtype;
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;  // byte range within the data region (which starts at data_start)
};

struct SafetensorsHeader {
  int64_t data_start = 0;  // 8 + header length: where the data region starts in the file
  std::vector<SafetensorsTensorInfo> tensors;  // sorted by name
  std::map<std::string, std::string> metadata;
  // The tensor named `name`, or nullptr.
  const SafetensorsTensorInfo* Find(std::string_view name) const;
};

// Bytes per element of a dtype name ("F32" -> 4); 0 for a name the project does not know.
int64_t SafetensorsDtypeSize(std::string_view dtype);

// How many bytes from the start of the file ParseSafetensorsHeader needs (8 + header length),
// from the file's first bytes (at least 8 of them); an error when the file is shorter than 8
// bytes or the header length is beyond the file or kMaxSafetensorsHeaderBytes. `what` names the
// file in errors.
absl::StatusOr<int64_t> SafetensorsHeaderBytesNeeded(std::string_view first_bytes, int64_t file_size,
                                                     std::string_view what);

// Parses the header of a file of `file_size` bytes whose first bytes are `file_prefix` (at least
// SafetensorsHeaderBytesNeeded of them; more are ignored). Accepts only a header that is a JSON
// object without duplicate keys, whose optional "__metadata__" maps strings to strings and whose
// other members are tensors {"dtype", "shape", "data_offsets"} and nothing else, with: a known
// dtype; a shape of non-negative integers whose byte size (element count x dtype size) fits in
// int64 and equals end - begin; 0 <= begin <= end within the data region; and byte ranges that
// tile the data region exactly (no overlap, no gap, nothing left over). Every error starts with
// "safetensors file <what>: " and names the tensor or field.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view file_prefix, int64_t file_size,
                                                         std::string_view what);

}  // namespace saegrid
