// A language model run inside the trainer to make activations (issue: train on a model's
// activations, not on files made elsewhere): a Hugging Face model directory loaded in C++, and the
// hookpoints whose activations it returns. One implementation per architecture, behind this
// interface; LoadLanguageModel picks it from config.json's model_type.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace saegrid {

// Where in the model an activation is taken, in TransformerLens' terms.
struct Hookpoint {
  enum class Kind { kResidPre, kResidPost, kAttnOut, kMlpOut };
  int64_t layer = 0;
  Kind kind = Kind::kResidPost;
  std::string name;  // as the user wrote it

  bool operator==(const Hookpoint& o) const { return layer == o.layer && kind == o.kind; }
};

// "blocks.L.hook_resid_pre", "blocks.L.hook_resid_post", "blocks.L.hook_attn_out",
// "blocks.L.hook_mlp_out" (SAELens / TransformerLens), or a block's module path as sparsify names
// it ("h.L", "layers.L", with or without "transformer.", "gpt_neox.", "model."), meaning the
// block's output (resid_post). An error names the hookpoint: unknown form, or L >= num_layers.
absl::StatusOr<Hookpoint> ParseHookpoint(const std::string& name, int64_t num_layers);

// The hookpoint's TransformerLens name ("blocks.8.hook_resid_post" for "h.8"): SAELens'
// metadata.hook_name.
std::string TransformerLensName(const Hookpoint& hook);

// An intervention at one hookpoint during a forward pass (the downstream-loss and ablation
// evaluations splice an SAE in here): `replace` receives the activations there [B, T, d_model]
// and returns what the rest of the model reads instead, of the same shape.
struct HookEdit {
  Hookpoint hook;
  std::function<torch::Tensor(const torch::Tensor&)> replace;
};

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;

  virtual const std::string& model_type() const = 0;
  virtual int64_t num_layers() const = 0;
  virtual int64_t d_model() const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t max_context() const = 0;  // 0: no limit of its own (rotary models)

  // Runs the model on `ids` [B, T] (int64, on the model's device) under no-grad and returns the
  // activations at `hooks`, in order, each [B, T, d_model] float32. With `logits` set it also
  // returns the logits [B, T, vocab]; without, the forward stops after the last layer a hook
  // needs. With `edit`, the edited activations replace the originals at its hookpoint; `hooks`
  // there still return the originals (later ones see the edit's effect). Errors: ids outside the
  // vocabulary, T past max_context, an edit that changes the shape.
  virtual absl::StatusOr<std::vector<torch::Tensor>> Forward(const torch::Tensor& ids,
                                                              const std::vector<Hookpoint>& hooks,
                                                              torch::Tensor* logits = nullptr,
                                                              const HookEdit* edit = nullptr) const = 0;
};

struct RandomWeights;

// Loads the model in directory `dir` (config.json + model.safetensors or a sharded
// model.safetensors.index.json; F32, F16 or BF16 weights, held as float32) onto `device`. An
// unsupported model_type, a missing or misshapen tensor: an error that names it and the file.
// `random` (engine/lm/hf_checkpoint.h): the randomised-weights control instead of the stored
// values.
absl::StatusOr<std::unique_ptr<LanguageModel>> LoadLanguageModel(const std::string& dir,
                                                                  torch::Device device = torch::kCPU,
                                                                  const RandomWeights* random = nullptr);

}  // namespace saegrid
