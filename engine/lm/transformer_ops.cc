#include "engine/lm/transformer_ops.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace saegrid::lm {

torch::Tensor CausalSelfAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const int64_t batch = q.size(0), heads = q.size(1), context = q.size(2), head_dim = q.size(3);
  const int64_t group = heads / k.size(1);
  const auto keys = group == 1 ? k : k.repeat_interleave(group, 1);
  const auto values = group == 1 ? v : v.repeat_interleave(group, 1);
  auto scores = torch::matmul(q, keys.transpose(-1, -2)) / std::sqrt(static_cast<double>(head_dim));
  const auto causal = torch::ones({context, context}, q.options().dtype(torch::kBool)).tril();
  scores = scores.masked_fill(causal.logical_not(), -std::numeric_limits<float>::infinity());
  return torch::matmul(torch::softmax(scores, -1), values).transpose(1, 2).reshape({batch, context, heads * head_dim});
}

torch::Tensor ApplyRotary(const torch::Tensor& x, int64_t rotary_dims, double base) {
  if (rotary_dims <= 0) return x;
  const int64_t context = x.size(2);
  const auto options = x.options().dtype(torch::kDouble);
  const auto inv_freq = 1.0 / torch::pow(base, torch::arange(0, rotary_dims, 2, options) / static_cast<double>(rotary_dims));
  const auto freqs = torch::outer(torch::arange(context, options), inv_freq);
  const auto angles = torch::cat({freqs, freqs}, -1);  // [T, rotary_dims]
  const auto cos = angles.cos().to(x.scalar_type()), sin = angles.sin().to(x.scalar_type());
  const auto rot = x.narrow(-1, 0, rotary_dims);
  const int64_t half = rotary_dims / 2;
  const auto rotated_half = torch::cat({-rot.narrow(-1, half, half), rot.narrow(-1, 0, half)}, -1);
  const auto out = rot * cos + rotated_half * sin;
  if (rotary_dims == x.size(-1)) return out;
  return torch::cat({out, x.narrow(-1, rotary_dims, x.size(-1) - rotary_dims)}, -1);
}

torch::Tensor Gelu(const torch::Tensor& x, bool tanh_approximation) {
  if (!tanh_approximation) return torch::gelu(x);
  return 0.5 * x * (1 + torch::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x.pow(3))));
}

HookCollector::HookCollector(const std::vector<Hookpoint>& hooks, const HookEdit* edit)
    : hooks_(hooks), edit_(edit), values_(hooks.size()) {
  for (const auto& h : hooks) last_layer_ = std::max(last_layer_, h.layer);
  if (edit_ != nullptr) last_layer_ = std::max(last_layer_, edit_->hook.layer);
}

absl::StatusOr<torch::Tensor> HookCollector::Offer(int64_t layer, Hookpoint::Kind kind, const torch::Tensor& value) {
  for (size_t i = 0; i < hooks_.size(); ++i) {
    if (hooks_[i].layer == layer && hooks_[i].kind == kind) values_[i] = value.clone();
  }
  if (edit_ == nullptr || edit_->hook.layer != layer || edit_->hook.kind != kind) return value;
  torch::Tensor replaced = edit_->replace(value);
  if (!replaced.defined() || replaced.sizes() != value.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat("language model: the edit at ", edit_->hook.name,
                                                   " must keep the activations' shape"));
  }
  return replaced.to(value.options());
}

absl::Status CheckTokens(const torch::Tensor& ids, int64_t vocab_size, int64_t max_context, const char* context_key) {
  if (ids.dim() != 2 || ids.scalar_type() != torch::kLong) {
    return absl::InvalidArgumentError("language model: token ids must be int64 [batch, context]");
  }
  if (max_context > 0 && ids.size(1) > max_context) {
    return absl::InvalidArgumentError(
        absl::StrCat("context length ", ids.size(1), " exceeds the model's ", context_key, " ", max_context));
  }
  if (ids.numel() > 0 && (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= vocab_size)) {
    return absl::InvalidArgumentError(absl::StrCat("token ids outside the vocabulary of ", vocab_size));
  }
  return absl::OkStatus();
}

}  // namespace saegrid::lm
