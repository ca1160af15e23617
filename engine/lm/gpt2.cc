#include "engine/lm/gpt2.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/lm/transformer_ops.h"

namespace saegrid {
namespace {

// Names appear with or without the model's wrapper prefix.
const std::vector<std::string> kPrefixes = {"transformer."};

struct Linear {
  torch::Tensor weight;  // [in, out] (Conv1D)
  torch::Tensor bias;    // [out]
  torch::Tensor operator()(const torch::Tensor& x) const { return torch::addmm(bias, x.reshape({-1, x.size(-1)}), weight).view(OutShape(x)); }
  std::vector<int64_t> OutShape(const torch::Tensor& x) const {
    std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
    s.back() = weight.size(1);
    return s;
  }
};

struct Norm {
  torch::Tensor weight, bias;
};

struct Block {
  Norm ln_1, ln_2;
  Linear attn, attn_proj, fc, fc_proj;
};

class Gpt2 : public LanguageModel {
 public:
  const std::string& model_type() const override { return type_; }
  int64_t num_layers() const override { return static_cast<int64_t>(blocks_.size()); }
  int64_t d_model() const override { return d_; }
  int64_t vocab_size() const override { return vocab_; }
  int64_t max_context() const override { return positions_; }

  absl::StatusOr<std::vector<torch::Tensor>> Forward(const torch::Tensor& ids, const std::vector<Hookpoint>& hooks,
                                                      torch::Tensor* logits, const HookEdit* edit) const override {
    torch::NoGradGuard no_grad;
    SAEGRID_RETURN_IF_ERROR(lm::CheckTokens(ids, vocab_, positions_, "n_positions"));
    const int64_t batch = ids.size(0), context = ids.size(1);
    lm::HookCollector hooks_out(hooks, edit);
    const int64_t last = logits != nullptr ? num_layers() - 1 : hooks_out.last_layer();
    auto x = wte_.index_select(0, ids.reshape(-1)).view({batch, context, d_}) +
             wpe_.narrow(0, 0, context).unsqueeze(0);
    const int64_t head_dim = d_ / heads_;
    for (int64_t l = 0; l <= last; ++l) {
      const Block& b = blocks_[l];
      SAEGRID_ASSIGN_OR_RETURN(x, hooks_out.Offer(l, Hookpoint::Kind::kResidPre, x));
      const auto qkv = b.attn(LayerNorm(x, b.ln_1));
      // GPT-2's fused projection is [q | k | v], each d wide, heads within each.
      auto split = [&](int64_t part) {
        return qkv.narrow(2, part * d_, d_).view({batch, context, heads_, head_dim}).transpose(1, 2);
      };
      auto attn_out = b.attn_proj(lm::CausalSelfAttention(split(0), split(1), split(2)));
      SAEGRID_ASSIGN_OR_RETURN(attn_out, hooks_out.Offer(l, Hookpoint::Kind::kAttnOut, attn_out));
      x = x + attn_out;
      auto mlp_out = b.fc_proj(lm::Gelu(b.fc(LayerNorm(x, b.ln_2)), tanh_gelu_));
      SAEGRID_ASSIGN_OR_RETURN(mlp_out, hooks_out.Offer(l, Hookpoint::Kind::kMlpOut, mlp_out));
      x = x + mlp_out;
      SAEGRID_ASSIGN_OR_RETURN(x, hooks_out.Offer(l, Hookpoint::Kind::kResidPost, x));
    }
    if (logits != nullptr) *logits = torch::matmul(LayerNorm(x, ln_f_), wte_.t());
    return hooks_out.Take();
  }

  static absl::StatusOr<std::unique_ptr<LanguageModel>> Load(const HfCheckpoint& c, torch::Device device) {
    std::unique_ptr<Gpt2> m(new Gpt2());
    SAEGRID_ASSIGN_OR_RETURN(const int64_t layers, c.ConfigInt("n_layer"));
    SAEGRID_ASSIGN_OR_RETURN(m->d_, c.ConfigInt("n_embd"));
    SAEGRID_ASSIGN_OR_RETURN(m->heads_, c.ConfigInt("n_head"));
    SAEGRID_ASSIGN_OR_RETURN(m->vocab_, c.ConfigInt("vocab_size"));
    SAEGRID_ASSIGN_OR_RETURN(m->positions_, c.ConfigInt("n_positions"));
    SAEGRID_ASSIGN_OR_RETURN(m->eps_, c.ConfigNumber("layer_norm_epsilon", 1e-5));
    SAEGRID_ASSIGN_OR_RETURN(const int64_t inner, c.ConfigInt("n_inner", 4 * m->d_));
    SAEGRID_ASSIGN_OR_RETURN(const std::string act, c.ConfigString("activation_function", "gelu_new"));
    if (act != "gelu_new" && act != "gelu") {
      return absl::InvalidArgumentError(absl::StrCat(c.dir(), "/config.json: activation_function \"", act,
                                                     "\" is not supported (gelu_new, gelu)"));
    }
    m->tanh_gelu_ = act == "gelu_new";
    if (m->heads_ == 0 || m->d_ % m->heads_ != 0) {
      return absl::InvalidArgumentError(absl::StrCat(c.dir(), "/config.json: n_embd ", m->d_, " is not a multiple of n_head ", m->heads_));
    }
    const int64_t d = m->d_;
    // Hugging Face's GPT-2 initialisation, for the randomised-weights control: N(0, 0.02^2)
    // (initializer_range), the residual output projections scaled by 1/sqrt(2 n_layer).
    SAEGRID_ASSIGN_OR_RETURN(const double std, c.ConfigNumber("initializer_range", 0.02));
    const double residual_std = std / std::sqrt(2.0 * static_cast<double>(std::max<int64_t>(layers, 1)));
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
    auto linear = [&](const std::string& name, int64_t in, int64_t out, double init_std) -> absl::StatusOr<Linear> {
      Linear li;
      SAEGRID_ASSIGN_OR_RETURN(li.weight, get(name + ".weight", {in, out}, TensorInit::Normal(init_std)));
      SAEGRID_ASSIGN_OR_RETURN(li.bias, get(name + ".bias", {out}, TensorInit::Zeros()));
      return li;
    };
    SAEGRID_ASSIGN_OR_RETURN(m->wte_, get("wte.weight", {m->vocab_, d}, TensorInit::Embedding(std)));
    SAEGRID_ASSIGN_OR_RETURN(m->wpe_, get("wpe.weight", {m->positions_, d}, TensorInit::Embedding(std)));
    for (int64_t l = 0; l < layers; ++l) {
      const std::string p = absl::StrCat("h.", l, ".");
      Block b;
      SAEGRID_ASSIGN_OR_RETURN(b.ln_1, norm(p + "ln_1"));
      SAEGRID_ASSIGN_OR_RETURN(b.ln_2, norm(p + "ln_2"));
      SAEGRID_ASSIGN_OR_RETURN(b.attn, linear(p + "attn.c_attn", d, 3 * d, std));
      SAEGRID_ASSIGN_OR_RETURN(b.attn_proj, linear(p + "attn.c_proj", d, d, residual_std));
      SAEGRID_ASSIGN_OR_RETURN(b.fc, linear(p + "mlp.c_fc", d, inner, std));
      SAEGRID_ASSIGN_OR_RETURN(b.fc_proj, linear(p + "mlp.c_proj", inner, d, residual_std));
      m->blocks_.push_back(std::move(b));
    }
    SAEGRID_ASSIGN_OR_RETURN(m->ln_f_, norm("ln_f"));
    return std::unique_ptr<LanguageModel>(std::move(m));
  }

 private:
  torch::Tensor LayerNorm(const torch::Tensor& x, const Norm& n) const {
    return torch::layer_norm(x, {d_}, n.weight, n.bias, eps_);
  }

  std::string type_ = "gpt2";
  int64_t d_ = 0, heads_ = 0, vocab_ = 0, positions_ = 0;
  double eps_ = 1e-5;
  bool tanh_gelu_ = true;
  torch::Tensor wte_, wpe_;
  std::vector<Block> blocks_;
  Norm ln_f_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<LanguageModel>> LoadGpt2(const HfCheckpoint& checkpoint, torch::Device device) {
  return Gpt2::Load(checkpoint, device);
}

}  // namespace saegrid
