// The project's own safetensors reader and writer.
// The reader validates the whole header (formats/safetensors_header.h) before exposing any tensor
// and rejects every malformed case with an error that names the file and the problem.
#pragma once

#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/mapped_file.h"

namespace saegrid {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // "F32", "BF16", ...
  std::vector<int64_t> shape;
  size_t begin = 0;  // byte range within the data buffer
  size_t end = 0;
};

class SafetensorsFile {
 public:
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  bool Has(const std::string& name) const { return index_.count(name) != 0; }
  absl::StatusOr<SafetensorsEntry> Entry(const std::string& name) const;
  // A copy of the named tensor in its stored dtype.
  absl::StatusOr<torch::Tensor> Get(const std::string& name) const;
  // Pointer to the named tensor's bytes inside the mapping (valid while this object lives).
  const uint8_t* DataOf(const SafetensorsEntry& entry) const { return buffer_ + entry.begin; }

  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return file_->path(); }
  // The mapping behind DataOf(), for readers that keep pointers beyond this object.
  const std::shared_ptr<const MappedFile>& mapping() const { return file_; }

 private:
  std::shared_ptr<const MappedFile> file_;
  const uint8_t* buffer_ = nullptr;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Serialises the tensors (in the given order) and metadata; WriteSafetensors writes the result
// atomically (temporary file, fsync, rename).
std::string SerializeSafetensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                 const std::map<std::string, std::string>& metadata = {});
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// dtype names <-> LibTorch scalar types; unknown names give an error.
absl::StatusOr<torch::ScalarType> SafetensorsDtypeToScalarType(const std::string& dtype);
absl::StatusOr<std::string> ScalarTypeToSafetensorsDtype(torch::ScalarType type);

}  // namespace saegrid
