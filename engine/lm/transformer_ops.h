// The pieces the decoder-only architectures share (engine/lm/*.cc): causal self-attention with
// grouped-query heads, rotary position embeddings in the rotate-half convention, and the
// collection of hookpoint activations as a forward pass goes.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "engine/lm/language_model.h"

namespace saegrid::lm {

// softmax(q k^T / sqrt(head_dim), causal) v for q [B, H, T, hd] and k, v [B, KV, T, hd] with H a
// multiple of KV (query head h reads key/value head h / (H / KV)); returns [B, T, H * hd].
torch::Tensor CausalSelfAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

// Rotates the first `rotary_dims` of the last dimension of x [B, H, T, hd] by position (0..T-1),
// with inverse frequencies base^(-2i / rotary_dims), the halves of the rotary dims paired
// (rotate_half); the other dims pass through.
torch::Tensor ApplyRotary(const torch::Tensor& x, int64_t rotary_dims, double base);

// GELU: exact (erf), or the tanh approximation GPT-2 calls "gelu_new" (written out: LibTorch
// 1.13's gelu has no approximate argument).
torch::Tensor Gelu(const torch::Tensor& x, bool tanh_approximation);

// The activations a forward pass was asked for, filled in as it reaches them, and the edit it
// applies (LanguageModel::Forward's `edit`, may be null).
class HookCollector {
 public:
  HookCollector(const std::vector<Hookpoint>& hooks, const HookEdit* edit);
  // The last layer the hooks (and the edit) need (-1: none).
  int64_t last_layer() const { return last_layer_; }
  // Records `value` for the hooks at (layer, kind) and returns what the model continues with:
  // the edit's replacement there, `value` elsewhere. Error: the edit changed the shape.
  absl::StatusOr<torch::Tensor> Offer(int64_t layer, Hookpoint::Kind kind, const torch::Tensor& value);
  std::vector<torch::Tensor> Take() { return std::move(values_); }

 private:
  const std::vector<Hookpoint>& hooks_;
  const HookEdit* edit_;
  std::vector<torch::Tensor> values_;
  int64_t last_layer_ = -1;
};

// Checks ids [B, T] against the vocabulary and `max_context` (0: none), which config.json calls
// `context_key` (the error names it).
absl::Status CheckTokens(const torch::Tensor& ids, int64_t vocab_size, int64_t max_context, const char* context_key);

}  // namespace saegrid::lm
