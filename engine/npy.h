// NumPy .npy files: a reader over a memory mapping whose
// header is validated by formats/npy_header.h, and a writer. Only little-endian C-order arrays
// are accepted.
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/mapped_file.h"

namespace saegrid {

struct NpyArray {
  std::shared_ptr<const MappedFile> file;
  std::string descr;  // e.g. "<f4"
  size_t item_size = 0;
  std::vector<int64_t> shape;
  size_t data_offset = 0;

  const uint8_t* data() const { return file->data() + data_offset; }
  int64_t numel() const;
};

absl::StatusOr<NpyArray> OpenNpy(const std::string& path);

// The LibTorch type for a descr ("<f4" -> float, "<i8" -> int64, ...); uint16 ("<u2") has no
// LibTorch type and gives an error here (the data reader interprets it as bf16 on request).
absl::StatusOr<torch::ScalarType> NpyDescrToScalarType(const std::string& descr);

// Writes a version 1.0 file (64-byte aligned data), atomically.
absl::Status WriteNpy(const std::string& path, const torch::Tensor& tensor);

}  // namespace saegrid
