// The weights and config of a Hugging Face model directory: config.json, and model.safetensors or
// the shards that model.safetensors.index.json maps each tensor to. Tensors are looked up by
// name, with the architecture's optional prefixes ("transformer.", "model.", ...), and come back as
// float32 of a checked shape, so each architecture's loader states what it expects and every
// mismatch is an error naming the tensor and the file.
#pragma once

#include <torch/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/safetensors.h"
#include "nlohmann/json.hpp"

namespace saegrid {

class HfCheckpoint {
 public:
  static absl::StatusOr<std::unique_ptr<HfCheckpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const nlohmann::json& config() const { return config_; }
  std::string model_type() const;

  // An integer / number field of config.json; `fallback` when absent (nullopt: required).
  absl::StatusOr<int64_t> ConfigInt(const std::string& key, std::optional<int64_t> fallback = std::nullopt) const;
  absl::StatusOr<double> ConfigNumber(const std::string& key, std::optional<double> fallback = std::nullopt) const;

  // Whether `name` exists, as given or behind one of `prefixes`.
  bool Has(const std::string& name, const std::vector<std::string>& prefixes) const;
  // The tensor `name` (as given or behind one of `prefixes`) as float32 of exactly `shape`.
  absl::StatusOr<torch::Tensor> Tensor(const std::string& name, const std::vector<std::string>& prefixes,
                                       const std::vector<int64_t>& shape) const;

 private:
  HfCheckpoint() = default;
  std::string dir_;
  nlohmann::json config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> file_of_;  // tensor name -> index into files_
};

}  // namespace saegrid
