// The header of a NumPy .npy file, parsed and validated
// from bytes alone (no LibTorch, no file access). engine/npy.h maps the file and delegates here.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace saegrid {

// A header dict longer than this is refused (NumPy writes well under 1 KiB; its own reader
// refuses more than 10000 bytes by default).
inline constexpr int64_t kMaxNpyHeaderBytes = 1 << 20;

struct NpyHeader {
  int major_version = 1, minor_version = 0;
  std::string descr;  // e.g. "<f4"
  int64_t item_size = 0;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  int64_t numel = 1;        // product of shape (1 for a scalar)
  int64_t data_offset = 0;  // where the array's bytes start in the file
  int64_t data_bytes = 0;   // numel * item_size
};

// Bytes per item of the descr codes the project reads ("<f4" -> 4; "<u4" for token ids only); 0
// for any other. "<u2" and "<V2" are raw 16-bit words (bf16 data, or token ids).
int64_t NpyItemSize(std::string_view descr);

// How many bytes from the start of the file ParseNpyHeader needs (the preamble plus the header
// length it declares), from the file's first bytes (12 are always enough); an error when the
// magic, version or header length is bad. `what` names the file in errors.
absl::StatusOr<int64_t> NpyHeaderBytesNeeded(std::string_view first_bytes, int64_t file_size, std::string_view what);

// Parses the header of a file of `file_size` bytes whose first bytes are `file_prefix` (at least
// NpyHeaderBytesNeeded of them). Accepts: the \x93NUMPY magic; version 1.0, 2.0 or 3.0; a header
// that is one Python dict literal with exactly the keys 'descr' (a string naming a known dtype),
// 'fortran_order' (True/False) and 'shape' (a tuple of non-negative integers), followed by
// spaces and newlines only; an element count and byte size that fit in int64; and data that fits
// in the file (bytes after the data are allowed, as NumPy allows them). Fortran order is
// reported, not refused. Every error starts with "npy file <what>: ".
absl::StatusOr<NpyHeader> ParseNpyHeader(std::string_view file_prefix, int64_t file_size, std::string_view what);

}  // namespace saegrid
