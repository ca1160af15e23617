// Tiny language models in the Hugging Face layout, written by the tests (config.json and
// model.safetensors, or a sharded index) with random weights large enough that every sublayer
// matters; and token files. Shared by the model, harvest and on-the-fly training tests.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace saegrid::testing {

constexpr int64_t kLayers = 3, kD = 32, kHeads = 4, kVocab = 50, kPositions = 24;

// A model's config and its tensors (name, shape, scale and offset of the random values).
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  double scale = 0.3, offset = 0;
};
struct ModelSpec {
  nlohmann::json config;
  std::vector<TensorSpec> tensors;
};

struct Layout {
  std::string prefix;  // e.g. "transformer."; "" for none
  torch::ScalarType dtype = torch::kFloat;
  int shards = 1;
};

ModelSpec Gpt2();
// Pythia's layout; rotary_pct 0.5 gives 4 rotary dimensions of each head's 8.
ModelSpec GptNeox(bool parallel_residual);
// Llama (grouped-query attention, 2 key/value heads for 4, untied head) or Qwen2 (q/k/v biases,
// tied head).
ModelSpec Llama(const std::string& type);

// Writes the model into `dir` (weights seeded, so the same on every call); `drop` leaves a tensor
// out, `misshape` writes one with its last dimension one too long.
void WriteModel(const std::string& dir, const ModelSpec& spec, const Layout& layout, const std::string& drop = "",
                const std::string& misshape = "");

// `ids` (any integer tensor) as a flat file of uint16 ids, the nanoGPT / sparsify convention.
void WriteTokenIds(const std::string& path, const torch::Tensor& ids);

}  // namespace saegrid::testing
