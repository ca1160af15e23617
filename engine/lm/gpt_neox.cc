#include "engine/lm/gpt_neox.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/lm/transformer_ops.h"

namespace saegrid {
namespace {

const std::vector<std::string> kPrefixes = {"gpt_neox."};

// nn.Linear: weight [out, in], y = x W^T + b.
struct Linear {
  torch::Tensor weight, bias;
  torch::Tensor operator()(const torch::Tensor& x) const { return torch::nn::functional::linear(x, weight, bias); }
};

struct Norm {
  torch::Tensor weight, bias;
};

struct Block {
  Norm input_norm, post_attention_norm;
  Linear qkv, dense, up, down;
};

class GptNeox : public LanguageModel {
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
    const int64_t batch = ids.size(0), context = ids.size(1), head_dim = d_ / heads_;
    lm::HookCollector out(hooks, edit);
    const int64_t last = logits != nullptr ? num_layers() - 1 : out.last_layer();
    auto x = embed_in_.index_select(0, ids.reshape(-1)).view({batch, context, d_});
    for (int64_t l = 0; l <= last; ++l) {
      const Block& b = blocks_[l];
      SAEGRID_ASSIGN_OR_RETURN(x, out.Offer(l, Hookpoint::Kind::kResidPre, x));
      // The fused projection is per head: [B, T, H, 3 hd], then q, k, v of hd each.
      const auto qkv = b.qkv(Norm_(x, b.input_norm)).view({batch, context, heads_, 3 * head_dim});
      auto part = [&](int64_t i) { return qkv.narrow(3, i * head_dim, head_dim).transpose(1, 2); };
      const auto q = lm::ApplyRotary(part(0), rotary_dims_, rotary_base_);
      const auto k = lm::ApplyRotary(part(1), rotary_dims_, rotary_base_);
      auto attn_out = b.dense(lm::CausalSelfAttention(q, k, part(2)));
      SAEGRID_ASSIGN_OR_RETURN(attn_out, out.Offer(l, Hookpoint::Kind::kAttnOut, attn_out));
      const auto mlp_input = parallel_residual_ ? x : x + attn_out;
      auto mlp_out = b.down(lm::Gelu(b.up(Norm_(mlp_input, b.post_attention_norm)), tanh_gelu_));
      SAEGRID_ASSIGN_OR_RETURN(mlp_out, out.Offer(l, Hookpoint::Kind::kMlpOut, mlp_out));
      x = x + attn_out + mlp_out;
      SAEGRID_ASSIGN_OR_RETURN(x, out.Offer(l, Hookpoint::Kind::kResidPost, x));
    }
    if (logits != nullptr) *logits = torch::matmul(Norm_(x, final_norm_), embed_out_.t());
    return out.Take();
  }

  static absl::StatusOr<std::unique_ptr<LanguageModel>> Load(const HfCheckpoint& c, torch::Device device) {
    std::unique_ptr<GptNeox> m(new GptNeox());
    SAEGRID_ASSIGN_OR_RETURN(const int64_t layers, c.ConfigInt("num_hidden_layers"));
    SAEGRID_ASSIGN_OR_RETURN(m->d_, c.ConfigInt("hidden_size"));
    SAEGRID_ASSIGN_OR_RETURN(m->heads_, c.ConfigInt("num_attention_heads"));
    SAEGRID_ASSIGN_OR_RETURN(const int64_t inner, c.ConfigInt("intermediate_size", 4 * m->d_));
    SAEGRID_ASSIGN_OR_RETURN(m->vocab_, c.ConfigInt("vocab_size"));
    SAEGRID_ASSIGN_OR_RETURN(m->max_positions_, c.ConfigInt("max_position_embeddings", 0));
    SAEGRID_ASSIGN_OR_RETURN(m->eps_, c.ConfigNumber("layer_norm_eps", 1e-5));
    SAEGRID_ASSIGN_OR_RETURN(const double rotary_pct, c.ConfigNumber("rotary_pct", 0.25));
    // The rotary base's key moved between transformers versions.
    double base = 10000;
    const auto& j = c.config();
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object() && j["rope_parameters"].contains("rope_theta")) {
      if (!j["rope_parameters"]["rope_theta"].is_number()) {
        return absl::InvalidArgumentError(absl::StrCat(c.dir(), "/config.json: \"rope_parameters.rope_theta\" must be a number"));
      }
      base = j["rope_parameters"]["rope_theta"].get<double>();
    } else if (j.contains("rope_theta") && !j["rope_theta"].is_null()) {
      SAEGRID_ASSIGN_OR_RETURN(base, c.ConfigNumber("rope_theta"));
    } else {
      SAEGRID_ASSIGN_OR_RETURN(base, c.ConfigNumber("rotary_emb_base", 10000.0));
    }
    m->rotary_base_ = base;
    SAEGRID_ASSIGN_OR_RETURN(m->parallel_residual_, c.ConfigBool("use_parallel_residual", true));
    SAEGRID_ASSIGN_OR_RETURN(const std::string act, c.ConfigString("hidden_act", "gelu"));
    if (act != "gelu" && act != "gelu_new") {
      return absl::InvalidArgumentError(absl::StrCat(c.dir(), "/config.json: hidden_act \"", act, "\" is not supported (gelu, gelu_new)"));
    }
    m->tanh_gelu_ = act == "gelu_new";
    if (m->heads_ == 0 || m->d_ % m->heads_ != 0) {
      return absl::InvalidArgumentError(absl::StrCat(c.dir(), "/config.json: hidden_size ", m->d_,
                                                     " is not a multiple of num_attention_heads ", m->heads_));
    }
    const int64_t d = m->d_;
    m->rotary_dims_ = static_cast<int64_t>(static_cast<double>(d / m->heads_) * rotary_pct);
    if (m->rotary_dims_ % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(c.dir(), "/config.json: rotary_pct gives ", m->rotary_dims_,
                                                     " rotary dimensions per head; they must be even"));
    }
    // Hugging Face's GPT-NeoX initialisation (the randomised-weights control): N(0, std^2) for
    // linear and embedding weights, zero biases, unit LayerNorms.
    SAEGRID_ASSIGN_OR_RETURN(const double std, c.ConfigNumber("initializer_range", 0.02));
    auto get = [&](const std::string& name, std::vector<int64_t> shape, const TensorInit& init) -> absl::StatusOr<torch::Tensor> {
      SAEGRID_ASSIGN_OR_RETURN(auto t, c.Tensor(name, kPrefixes, shape, init));
      return t.to(device);
    };
    auto norm = [&](const std::string& name) -> absl::StatusOr<Norm> {
      Norm n;
      SAEGRID_ASSIGN_OR_RETURN(n.weight, get(name + ".weight", {d}, TensorInit::Ones()));
      SAEGRID_ASSIGN_OR_RETURN(n.bias, get(name + ".bias", {d}, TensorInit::Zeros()));
      return n;
    };
    auto linear = [&](const std::string& name, int64_t in, int64_t out) -> absl::StatusOr<Linear> {
      Linear li;
      SAEGRID_ASSIGN_OR_RETURN(li.weight, get(name + ".weight", {out, in}, TensorInit::Normal(std)));
      SAEGRID_ASSIGN_OR_RETURN(li.bias, get(name + ".bias", {out}, TensorInit::Zeros()));
      return li;
    };
    SAEGRID_ASSIGN_OR_RETURN(m->embed_in_, get("embed_in.weight", {m->vocab_, d}, TensorInit::Embedding(std)));
    for (int64_t l = 0; l < layers; ++l) {
      const std::string p = absl::StrCat("layers.", l, ".");
      Block b;
      SAEGRID_ASSIGN_OR_RETURN(b.input_norm, norm(p + "input_layernorm"));
      SAEGRID_ASSIGN_OR_RETURN(b.post_attention_norm, norm(p + "post_attention_layernorm"));
      SAEGRID_ASSIGN_OR_RETURN(b.qkv, linear(p + "attention.query_key_value", d, 3 * d));
      SAEGRID_ASSIGN_OR_RETURN(b.dense, linear(p + "attention.dense", d, d));
      SAEGRID_ASSIGN_OR_RETURN(b.up, linear(p + "mlp.dense_h_to_4h", d, inner));
      SAEGRID_ASSIGN_OR_RETURN(b.down, linear(p + "mlp.dense_4h_to_h", inner, d));
      m->blocks_.push_back(std::move(b));
    }
    SAEGRID_ASSIGN_OR_RETURN(m->final_norm_, norm("final_layer_norm"));
    SAEGRID_ASSIGN_OR_RETURN(m->embed_out_, get("embed_out.weight", {m->vocab_, d}, TensorInit::Normal(std)));
    return std::unique_ptr<LanguageModel>(std::move(m));
  }

 private:
  torch::Tensor Norm_(const torch::Tensor& x, const Norm& n) const { return torch::layer_norm(x, {d_}, n.weight, n.bias, eps_); }

  std::string type_ = "gpt_neox";
  int64_t d_ = 0, heads_ = 0, vocab_ = 0, max_positions_ = 0, rotary_dims_ = 0;
  double eps_ = 1e-5, rotary_base_ = 10000;
  bool parallel_residual_ = true, tanh_gelu_ = false;
  torch::Tensor embed_in_, embed_out_;
  std::vector<Block> blocks_;
  Norm final_norm_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<LanguageModel>> LoadGptNeox(const HfCheckpoint& checkpoint, torch::Device device) {
  return GptNeox::Load(checkpoint, device);
}

}  // namespace saegrid
