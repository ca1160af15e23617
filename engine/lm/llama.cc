#include "engine/lm/llama.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/lm/transformer_ops.h"

namespace saegrid {
namespace {

const std::vector<std::string> kPrefixes = {"model."};

// nn.Linear: weight [out, in]; the bias only where the checkpoint has one.
struct Linear {
  torch::Tensor weight, bias;
  torch::Tensor operator()(const torch::Tensor& x) const { return torch::nn::functional::linear(x, weight, bias); }
};

struct Block {
  torch::Tensor input_norm, post_attention_norm;  // RMSNorm weights
  Linear q, k, v, o, gate, up, down;
};

class Llama : public LanguageModel {
 public:
  const std::string& model_type() const override { return type_; }
  int64_t num_layers() const override { return static_cast<int64_t>(blocks_.size()); }
  int64_t d_model() const override { return d_; }
  int64_t vocab_size() const override { return vocab_; }
  int64_t max_context() const override { return max_positions_; }

  absl::StatusOr<std::vector<torch::Tensor>> Forward(const torch::Tensor& ids, const std::vector<Hookpoint>& hooks,
                                                      torch::Tensor* logits, const HookEdit* edit) const override {
    torch::NoGradGuard no_grad;
    SAEGRID_RETURN_IF_ERROR(lm::CheckTokens(ids, vocab_, max_positions_, "max_position_embeddings"));
    // Full causal attention equals sliding-window attention only within the window.
    SAEGRID_RETURN_IF_ERROR(lm::CheckTokens(ids, vocab_, sliding_window_, "sliding_window"));
    const int64_t batch = ids.size(0), context = ids.size(1);
    lm::HookCollector out(hooks, edit);
    const int64_t last = logits != nullptr ? num_layers() - 1 : out.last_layer();
    auto x = embed_.index_select(0, ids.reshape(-1)).view({batch, context, d_});
    auto heads = [&](const torch::Tensor& t, int64_t n) { return t.view({batch, context, n, head_dim_}).transpose(1, 2); };
    for (int64_t l = 0; l <= last; ++l) {
      const Block& b = blocks_[l];
      SAEGRID_ASSIGN_OR_RETURN(x, out.Offer(l, Hookpoint::Kind::kResidPre, x));
      const auto h = RmsNorm(x, b.input_norm);
      const auto q = lm::ApplyRotary(heads(b.q(h), heads_), head_dim_, rope_theta_);
      const auto k = lm::ApplyRotary(heads(b.k(h), kv_heads_), head_dim_, rope_theta_);
      auto attn_out = b.o(lm::CausalSelfAttention(q, k, heads(b.v(h), kv_heads_)));
      SAEGRID_ASSIGN_OR_RETURN(attn_out, out.Offer(l, Hookpoint::Kind::kAttnOut, attn_out));
      x = x + attn_out;
      const auto m = RmsNorm(x, b.post_attention_norm);
      auto mlp_out = b.down(torch::silu(b.gate(m)) * b.up(m));
      SAEGRID_ASSIGN_OR_RETURN(mlp_out, out.Offer(l, Hookpoint::Kind::kMlpOut, mlp_out));
      x = x + mlp_out;
      SAEGRID_ASSIGN_OR_RETURN(x, out.Offer(l, Hookpoint::Kind::kResidPost, x));
    }
    if (logits != nullptr) *logits = torch::matmul(RmsNorm(x, final_norm_), lm_head_.t());
    return out.Take();
  }

  static absl::StatusOr<std::unique_ptr<LanguageModel>> Load(const HfCheckpoint& c, torch::Device device) {
    std::unique_ptr<Llama> m(new Llama());
    m->type_ = c.model_type();
    const auto& j = c.config();
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
      return absl::InvalidArgumentError(absl::StrCat(c.dir(), "/config.json: rope_scaling is not supported"));
    }
    SAEGRID_ASSIGN_OR_RETURN(const std::string act, c.ConfigString("hidden_act", "silu"));
    if (act != "silu") {
      return absl::InvalidArgumentError(absl::StrCat(c.dir(), "/config.json: hidden_act \"", act, "\" is not supported (silu)"));
    }
    SAEGRID_ASSIGN_OR_RETURN(const int64_t layers, c.ConfigInt("num_hidden_layers"));
    SAEGRID_ASSIGN_OR_RETURN(m->d_, c.ConfigInt("hidden_size"));
    SAEGRID_ASSIGN_OR_RETURN(m->heads_, c.ConfigInt("num_attention_heads"));
    SAEGRID_ASSIGN_OR_RETURN(m->kv_heads_, c.ConfigInt("num_key_value_heads", m->heads_));
    if (m->heads_ == 0 || m->kv_heads_ == 0 || m->heads_ % m->kv_heads_ != 0) {
      return absl::InvalidArgumentError(absl::StrCat(c.dir(), "/config.json: num_attention_heads ", m->heads_,
                                                     " is not a multiple of num_key_value_heads ", m->kv_heads_));
    }
    SAEGRID_ASSIGN_OR_RETURN(m->head_dim_, c.ConfigInt("head_dim", m->d_ / m->heads_));
    SAEGRID_ASSIGN_OR_RETURN(const int64_t inner, c.ConfigInt("intermediate_size"));
    SAEGRID_ASSIGN_OR_RETURN(m->vocab_, c.ConfigInt("vocab_size"));
    SAEGRID_ASSIGN_OR_RETURN(m->max_positions_, c.ConfigInt("max_position_embeddings", 0));
    SAEGRID_ASSIGN_OR_RETURN(m->eps_, c.ConfigNumber("rms_norm_eps", 1e-6));
    SAEGRID_ASSIGN_OR_RETURN(m->rope_theta_, c.ConfigNumber("rope_theta", 10000.0));
    SAEGRID_ASSIGN_OR_RETURN(const bool qwen_window, c.ConfigBool("use_sliding_window", false));
    const bool windowed = (m->type_ == "mistral" && j.contains("sliding_window") && !j["sliding_window"].is_null()) ||
                          (m->type_ == "qwen2" && qwen_window);
    if (windowed) {
      SAEGRID_ASSIGN_OR_RETURN(m->sliding_window_, c.ConfigInt("sliding_window"));
    }
    const int64_t d = m->d_, q_width = m->heads_ * m->head_dim_, kv_width = m->kv_heads_ * m->head_dim_;
    // Hugging Face's Llama initialisation (the randomised-weights control): N(0, std^2) for linear
    // and embedding weights, zero biases, unit RMSNorms.
    SAEGRID_ASSIGN_OR_RETURN(const double std, c.ConfigNumber("initializer_range", 0.02));
    auto get = [&](const std::string& name, std::vector<int64_t> shape, const TensorInit& init) -> absl::StatusOr<torch::Tensor> {
      SAEGRID_ASSIGN_OR_RETURN(auto t, c.Tensor(name, kPrefixes, shape, init));
      return t.to(device);
    };
    auto linear = [&](const std::string& name, int64_t in, int64_t out) -> absl::StatusOr<Linear> {
      Linear li;
      SAEGRID_ASSIGN_OR_RETURN(li.weight, get(name + ".weight", {out, in}, TensorInit::Normal(std)));
      if (c.Has(name + ".bias", kPrefixes)) {
        SAEGRID_ASSIGN_OR_RETURN(li.bias, get(name + ".bias", {out}, TensorInit::Zeros()));
      }
      return li;
    };
    SAEGRID_ASSIGN_OR_RETURN(m->embed_, get("embed_tokens.weight", {m->vocab_, d}, TensorInit::Embedding(std)));
    for (int64_t l = 0; l < layers; ++l) {
      const std::string p = absl::StrCat("layers.", l, ".");
      Block b;
      SAEGRID_ASSIGN_OR_RETURN(b.input_norm, get(p + "input_layernorm.weight", {d}, TensorInit::Ones()));
      SAEGRID_ASSIGN_OR_RETURN(b.post_attention_norm, get(p + "post_attention_layernorm.weight", {d}, TensorInit::Ones()));
      SAEGRID_ASSIGN_OR_RETURN(b.q, linear(p + "self_attn.q_proj", d, q_width));
      SAEGRID_ASSIGN_OR_RETURN(b.k, linear(p + "self_attn.k_proj", d, kv_width));
      SAEGRID_ASSIGN_OR_RETURN(b.v, linear(p + "self_attn.v_proj", d, kv_width));
      SAEGRID_ASSIGN_OR_RETURN(b.o, linear(p + "self_attn.o_proj", q_width, d));
      SAEGRID_ASSIGN_OR_RETURN(b.gate, linear(p + "mlp.gate_proj", d, inner));
      SAEGRID_ASSIGN_OR_RETURN(b.up, linear(p + "mlp.up_proj", d, inner));
      SAEGRID_ASSIGN_OR_RETURN(b.down, linear(p + "mlp.down_proj", inner, d));
      m->blocks_.push_back(std::move(b));
    }
    SAEGRID_ASSIGN_OR_RETURN(m->final_norm_, get("norm.weight", {d}, TensorInit::Ones()));
    SAEGRID_ASSIGN_OR_RETURN(const bool tied, c.ConfigBool("tie_word_embeddings", false));
    if (tied) {
      m->lm_head_ = m->embed_;
    } else {
      SAEGRID_ASSIGN_OR_RETURN(m->lm_head_, get("lm_head.weight", {m->vocab_, d}, TensorInit::Normal(std)));
    }
    return std::unique_ptr<LanguageModel>(std::move(m));
  }

 private:
  torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight) const {
    return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps_) * weight;
  }

  std::string type_;
  int64_t d_ = 0, heads_ = 0, kv_heads_ = 0, head_dim_ = 0, vocab_ = 0, max_positions_ = 0;
  int64_t sliding_window_ = 0;  // 0: none
  double eps_ = 1e-6, rope_theta_ = 10000;
  torch::Tensor embed_, lm_head_, final_norm_;
  std::vector<Block> blocks_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<LanguageModel>> LoadLlama(const HfCheckpoint& checkpoint, torch::Device device) {
  return Llama::Load(checkpoint, device);
}

}  // namespace saegrid
