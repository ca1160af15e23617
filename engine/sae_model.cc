#include "engine/sae_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "engine/sparse_autograd.h"
#include "kernels/sparse_ops.h"

namespace saegrid {
namespace {

constexpr double kLayerNormEps = 1e-5;

double Scalar(const torch::Tensor& t) { return t.detach().to(torch::kDouble).item<double>(); }

// sum((a - mean_over_batch(a))^2): the FVU denominator. A constant batch gives 0; the caller
// guards against dividing by it.
torch::Tensor TotalVariance(const torch::Tensor& a) {
  return (a - a.mean(0, /*keepdim=*/true)).pow(2).sum();
}

}  // namespace

const std::vector<std::string>& SaeParameters::Names() {
  static const std::vector<std::string> names = {"W_enc", "b_enc", "W_dec", "b_pre"};
  return names;
}

SaeParameters SaeParameters::Clone() const {
  return {w_enc.detach().clone(), b_enc.detach().clone(), w_dec.detach().clone(),
          b_pre.detach().clone()};
}

int64_t NearestPowerOfTwo(double value) {
  if (value <= 1) return 1;
  return int64_t{1} << static_cast<int>(std::lround(std::log2(value)));
}

ModelConfig ResolveModelConfig(ModelConfig config, int64_t d_in) {
  config.d_in = d_in;
  if (config.num_latents <= 0) config.num_latents = d_in * config.expansion_factor;
  if (config.k_aux <= 0) config.k_aux = NearestPowerOfTwo(d_in / 2.0);
  config.k_aux = std::min(config.k_aux, config.num_latents);
  return config;
}

torch::Tensor GeometricMedian(const torch::Tensor& points, int max_iterations, double tolerance) {
  torch::NoGradGuard no_grad;
  const auto p = points.to(torch::kDouble);
  auto median = p.mean(0);
  for (int i = 0; i < max_iterations; ++i) {
    const auto weights = 1.0 / (p - median).norm(2, 1).clamp_min(1e-8);
    const auto next = (weights.unsqueeze(1) * p).sum(0) / weights.sum();
    const double moved = Scalar((next - median).norm());
    median = next;
    if (moved <= tolerance * std::max(1.0, Scalar(median.norm()))) break;
  }
  return median.to(points.scalar_type());
}

SaeModel::SaeModel(const ModelConfig& config) : config_(config) {
  TORCH_CHECK(config_.d_in > 0 && config_.num_latents > 0, "model config is not resolved");
  const auto opts = torch::TensorOptions().dtype(torch::kFloat);
  params_.w_enc = torch::zeros({config_.num_latents, config_.d_in}, opts);
  params_.b_enc = torch::zeros({config_.num_latents}, opts);
  params_.w_dec = torch::zeros({config_.num_latents, config_.d_in}, opts);
  params_.b_pre = torch::zeros({config_.d_in}, opts);
  for (auto& p : params_.All()) p.set_requires_grad(true);
}

void SaeModel::Initialize(const torch::Tensor& sample, uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(seed);
  const int64_t n = config_.num_latents, d = config_.d_in;
  torch::Tensor dec;
  if (config_.decoder_init == DecoderInit::kOrthogonal) {
    // Orthonormal columns when n >= d (a tight frame), orthonormal rows when n < d.
    const bool tall = n >= d;
    auto a = torch::randn(tall ? std::vector<int64_t>{n, d} : std::vector<int64_t>{d, n}, gen,
                          torch::kDouble);
    auto q = std::get<0>(torch::linalg_qr(a, "reduced"));
    dec = (tall ? q : q.t()).to(torch::kFloat);
  } else {
    dec = torch::randn({n, d}, gen, torch::kFloat);
  }
  dec = dec / dec.norm(2, 1, true).clamp_min(1e-12);
  params_.w_dec.copy_(dec);
  params_.w_enc.copy_(dec);
  params_.b_enc.zero_();
  params_.b_pre.copy_(GeometricMedian(sample.to(torch::kFloat)));
}

torch::Tensor SaeModel::NormalizeInputs(const torch::Tensor& x) const {
  if (config_.normalize_inputs == InputNormalization::kNone) return x;
  const auto mean = x.mean(-1, /*keepdim=*/true);
  const auto centered = x - mean;
  const auto std = centered.pow(2).mean(-1, true).sqrt();
  return centered / (std + kLayerNormEps);
}

torch::Tensor SaeModel::PreActivations(const torch::Tensor& x, const SaeParameters& p) const {
  return torch::addmm(p.b_enc, x - p.b_pre, p.w_enc.t());
}

Selection SaeModel::SelectMain(const torch::Tensor& pre) const {
  if (config_.architecture == Architecture::kReLU) {
    // The active set of a ReLU SAE, padded to the widest row of the batch: the top-m
    // pre-activations contain every positive one; the padding is <= 0 and ReLU zeroes it.
    const int64_t widest = (pre > 0).sum(1).max().item<int64_t>();
    const auto top = pre.topk(std::max<int64_t>(widest, 1), 1, true, false);
    return {std::get<1>(top), std::get<0>(top)};
  }
  const auto top = pre.topk(std::min(config_.k, pre.size(1)), 1, true, false);
  return {std::get<1>(top), std::get<0>(top)};
}

std::optional<Selection> SaeModel::SelectAux(const torch::Tensor& pre,
                                             const torch::Tensor& dead_mask) const {
  if (config_.architecture != Architecture::kTopK || !dead_mask.defined()) return std::nullopt;
  const auto dead = dead_mask.nonzero().squeeze(1);
  if (dead.numel() == 0) return std::nullopt;
  const int64_t k_aux = std::min(config_.k_aux, dead.numel());
  const auto top = pre.index_select(1, dead).topk(k_aux, 1, true, false);
  const auto local = std::get<1>(top);
  return Selection{dead.index_select(0, local.flatten()).view_as(local), std::get<0>(top)};
}

ForwardOutput SaeModel::TrainingForward(const torch::Tensor& x, const torch::Tensor& dead_mask,
                                        ComputePath path) const {
  const auto& p = params_;
  const int64_t batch = x.size(0);
  torch::Tensor pre_dense;  // only the dense path keeps the B x n matrix in the graph
  torch::Tensor pre_values;
  {
    torch::NoGradGuard no_grad;
    pre_values = PreActivations(x, p);
  }
  const Selection main = SelectMain(pre_values);
  const std::optional<Selection> aux = SelectAux(pre_values, dead_mask);

  torch::Tensor x_hat, acts, e_hat;
  if (path == ComputePath::kSparse) {
    torch::Tensor x_centered;
    {
      torch::NoGradGuard no_grad;
      x_centered = x - p.b_pre;
    }
    // One gather for the main and AuxK selections, so W_enc gets a single gradient buffer.
    const int64_t k_main = main.indices.size(1);
    auto indices = aux ? torch::cat({main.indices, aux->indices}, 1) : main.indices;
    auto values = aux ? torch::cat({main.values, aux->values}, 1) : main.values;
    const auto selected = EncoderAtIndices(x_centered, p.w_enc, p.b_enc, p.b_pre, indices, values);
    acts = torch::relu(selected.narrow(1, 0, k_main));
    x_hat = SparseDecode(acts, main.indices, p.w_dec) + p.b_pre;
    if (aux) {
      const auto aux_acts = torch::relu(selected.narrow(1, k_main, aux->indices.size(1)));
      e_hat = SparseDecode(aux_acts, aux->indices, p.w_dec);
    }
  } else {
    pre_dense = PreActivations(x, p);
    const auto relu_pre = torch::relu(pre_dense);
    torch::Tensor z = relu_pre;
    if (config_.architecture == Architecture::kTopK) {
      z = relu_pre * torch::zeros_like(pre_dense).scatter_(1, main.indices, 1.0);
    }
    x_hat = z.mm(p.w_dec) + p.b_pre;
    acts = z.gather(1, main.indices);
    if (aux) {
      const auto z_aux = relu_pre * torch::zeros_like(pre_dense).scatter_(1, aux->indices, 1.0);
      e_hat = z_aux.mm(p.w_dec);
    }
  }

  ForwardOutput out;
  const auto error = x - x_hat;
  const auto variance = TotalVariance(x).clamp_min(1e-30);
  const auto fvu = error.pow(2).sum() / variance;
  out.loss = fvu;
  out.fvu = Scalar(fvu);
  out.mse = Scalar(error.pow(2).mean());
  if (aux) {
    // AuxK fits the dead latents' reconstruction (no b_pre) to the detached residual.
    const auto residual = error.detach();
    const double residual_variance = Scalar(TotalVariance(residual));
    if (residual_variance > 0) {
      const auto auxk = (residual - e_hat).pow(2).sum() / residual_variance;
      const double value = Scalar(auxk);
      if (std::isfinite(value)) {
        out.loss = out.loss + config_.auxk_alpha * auxk;
        out.auxk_loss = value;
      }
    }
  }
  if (config_.architecture == Architecture::kReLU) {
    const auto l1 = acts.sum() / static_cast<double>(batch);
    out.loss = out.loss + config_.l1_coefficient * l1;
    out.l1_loss = Scalar(l1);
  }
  out.indices = main.indices;
  out.acts = acts.detach();
  out.l0 = Scalar((out.acts > 0).sum()) / static_cast<double>(batch);
  out.num_dead = dead_mask.defined() ? dead_mask.sum().item<int64_t>() : 0;
  return out;
}

Selection SaeModel::Encode(const torch::Tensor& x, const SaeParameters& params) const {
  torch::NoGradGuard no_grad;
  Selection s = SelectMain(PreActivations(x, params));
  s.values = torch::relu(s.values);
  return s;
}

torch::Tensor SaeModel::Decode(const Selection& selection, const SaeParameters& params) const {
  torch::NoGradGuard no_grad;
  return kernels::DenseSparseMatmul(selection.values, selection.indices, params.w_dec) +
         params.b_pre;
}

void SaeModel::ProjectDecoderGradient() const {
  torch::NoGradGuard no_grad;
  auto grad = params_.w_dec.mutable_grad();
  if (!grad.defined()) return;
  const auto& w = params_.w_dec;
  const auto parallel = (grad * w).sum(1, true) / w.pow(2).sum(1, true).clamp_min(1e-12);
  grad.sub_(parallel * w);
}

void SaeModel::RenormalizeDecoder() const {
  torch::NoGradGuard no_grad;
  params_.w_dec.div_(params_.w_dec.norm(2, 1, true).clamp_min(1e-12));
}

}  // namespace saegrid
