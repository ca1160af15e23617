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

// How an architecture initialises a tensor: what the randomised-weights control draws instead of
// the stored values (seed 004's control: the same architecture with untrained weights).
struct TensorInit {
  enum class Kind { kNormal, kOnes, kZeros };
  Kind kind = Kind::kNormal;
  double std = 0.02;       // kNormal: N(0, std^2)
  bool embedding = false;  // kept as stored unless embeddings are randomised too
  static TensorInit Normal(double std) { return {Kind::kNormal, std, false}; }
  static TensorInit Embedding(double std) { return {Kind::kNormal, std, true}; }
  static TensorInit Ones() { return {Kind::kOnes, 0, false}; }
  static TensorInit Zeros() { return {Kind::kZeros, 0, false}; }
};

// The randomised-weights control: every tensor re-drawn by its architecture's initialisation,
// from `seed` and the tensor's name (so a tensor's values do not depend on the load order).
struct RandomWeights {
  bool enabled = false;
  uint64_t seed = 0;
  bool embeddings_too = false;  // also the token (and position) embeddings
};

class HfCheckpoint {
 public:
  static absl::StatusOr<std::unique_ptr<HfCheckpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const nlohmann::json& config() const { return config_; }
  std::string model_type() const;

  // An integer / number field of config.json; `fallback` when absent (nullopt: required).
  absl::StatusOr<int64_t> ConfigInt(const std::string& key, std::optional<int64_t> fallback = std::nullopt) const;
  absl::StatusOr<double> ConfigNumber(const std::string& key, std::optional<double> fallback = std::nullopt) const;
  absl::StatusOr<std::string> ConfigString(const std::string& key, const std::string& fallback) const;
  absl::StatusOr<bool> ConfigBool(const std::string& key, bool fallback) const;

  // Whether `name` exists, as given or behind one of `prefixes`.
  bool Has(const std::string& name, const std::vector<std::string>& prefixes) const;
  // The tensor `name` (as given or behind one of `prefixes`) as float32 of exactly `shape`; with
  // random weights set, drawn by `init` instead (the stored tensor must still exist and fit).
  absl::StatusOr<torch::Tensor> Tensor(const std::string& name, const std::vector<std::string>& prefixes,
                                       const std::vector<int64_t>& shape, const TensorInit& init = {}) const;

  void set_random_weights(const RandomWeights& random) { random_ = random; }
  const RandomWeights& random_weights() const { return random_; }

 private:
  HfCheckpoint() = default;
  std::string dir_;
  nlohmann::json config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> file_of_;  // tensor name -> index into files_
  RandomWeights random_;
};

}  // namespace saegrid
