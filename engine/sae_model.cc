#include "engine/sae_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/chunked_encoder.h"
#include "engine/host_reads.h"
#include "engine/sharded_selection.h"
#include "engine/sparse_autograd.h"
#include "kernels/sparse_ops.h"

namespace saegrid {
namespace {

constexpr double kLayerNormEps = 1e-5;

double Scalar(const torch::Tensor& t) { return t.detach().to(torch::kDouble).item<double>(); }

// sum((a - mean(a))^2) over the rows of every replica: the FVU denominator of the global batch,
// as a 0-d float64 tensor on a's device. One pass of float64 sums (sum of rows, sum of squares)
// so that one all-reduce suffices; a constant batch gives 0 and the caller guards against
// dividing by it.
absl::StatusOr<torch::Tensor> GlobalTotalVariance(const torch::Tensor& a, Communicator* replicas) {
  torch::NoGradGuard no_grad;
  const auto a64 = a.detach().to(torch::kDouble);
  auto sums = torch::cat({a64.sum(0), a64.pow(2).sum().view({1}),
                          torch::full({1}, static_cast<double>(a.size(0)), a64.options())});
  if (replicas != nullptr) {
    auto st = replicas->AllReduce(sums, ReduceOp::kSum);
    if (!st.ok()) return st;
  }
  const int64_t d = a.size(1);
  const auto rows = sums[d + 1].clamp_min(1.0);
  const auto mean_term = sums.narrow(0, 0, d).pow(2).sum() / rows;
  return (sums[d] - mean_term).clamp_min(0.0);
}

// The sum of every shard's partial reconstruction: the value is the all-reduced total, the
// gradient flows to this shard's partial unchanged (every shard computes the same loss from the
// same total, so dL/d partial = dL/d total).
absl::StatusOr<torch::Tensor> SumOverShards(const torch::Tensor& partial, Communicator* shards) {
  if (shards == nullptr || shards->size() == 1) return partial;
  auto total = partial.detach().clone();
  auto st = shards->AllReduce(total, ReduceOp::kSum);
  if (!st.ok()) return st;
  return total + (partial - partial.detach());
}

// Adds the seconds of its scope to one field of a StepProfile (when there is one).
class ScopedPhase {
 public:
  ScopedPhase(StepProfile* profile, double StepProfile::*field)
      : profile_(profile), field_(field), start_(std::chrono::steady_clock::now()) {}
  ~ScopedPhase() {
    if (profile_ != nullptr) {
      profile_->*field_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }
  }

 private:
  StepProfile* profile_;
  double StepProfile::*field_;
  std::chrono::steady_clock::time_point start_;
};

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

ForwardSums ForwardSums::FromHost(const torch::Tensor& host) {
  TORCH_CHECK(host.device().is_cpu() && host.scalar_type() == torch::kDouble && host.numel() == kCount,
              "ForwardSums::FromHost needs ", static_cast<int64_t>(kCount), " float64 values on the CPU");
  const auto values = host.contiguous();
  const double* v = values.data_ptr<double>();
  ForwardSums s;
  s.error_sq = v[kErrorSq];
  s.aux_error_sq = v[kAuxErrorSq];
  s.l1 = v[kL1];
  s.active = v[kActive];
  s.overflow_tokens = v[kOverflowTokens];
  s.tokens = v[kTokens];
  s.variance = v[kVariance];
  s.residual_variance = v[kResidualVariance];
  return s;
}

void FinalizeMetrics(ForwardOutput& out, int64_t d_in) {
  out.host_sums = ForwardSums::FromHost(ToHost(out.sums));
  MetricsFromHostSums(out, d_in);
}

void MetricsFromHostSums(ForwardOutput& out, int64_t d_in) {
  const auto& s = out.host_sums;
  const double tokens = std::max(s.tokens, 1.0);
  out.fvu = s.error_sq / std::max(s.variance, 1e-30);
  out.mse = s.error_sq / (tokens * static_cast<double>(d_in));
  out.auxk_loss = s.residual_variance > 0 ? s.aux_error_sq / s.residual_variance : 0;
  out.l1_loss = s.l1 / tokens;
  out.l0 = s.active / tokens;
  out.overflow_rate = s.overflow_tokens / tokens;
}

SaeModel::SaeModel(const ModelConfig& config, int64_t shard, int64_t shards, torch::Device device)
    : config_(config) {
  TORCH_CHECK(config_.d_in > 0 && config_.num_latents > 0, "model config is not resolved");
  TORCH_CHECK(shards >= 1 && shard >= 0 && shard < shards && config_.num_latents % shards == 0,
              "num_latents must divide into the shards");
  latent_count_ = config_.num_latents / shards;
  latent_begin_ = shard * latent_count_;
  const auto opts = torch::TensorOptions().dtype(torch::kFloat).device(device);
  params_.w_enc = torch::zeros({latent_count_, config_.d_in}, opts);
  params_.b_enc = torch::zeros({latent_count_}, opts);
  params_.w_dec = torch::zeros({latent_count_, config_.d_in}, opts);
  params_.b_pre = torch::zeros({config_.d_in}, opts);
  for (auto& p : params_.All()) p.set_requires_grad(true);
}

SaeModel SaeModel::ForInference(const ModelConfig& config) {
  SaeModel m;
  m.config_ = config;
  m.latent_count_ = config.num_latents;
  return m;
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
  dec = dec.narrow(0, latent_begin_, latent_count_);
  dec = dec / dec.norm(2, 1, true).clamp_min(1e-12);
  params_.w_dec.copy_(dec);
  params_.w_enc.copy_(dec);
  params_.b_enc.zero_();
  params_.b_pre.copy_(GeometricMedian(sample.to(torch::kFloat)));
}

double SaeModel::FitInputScale(const torch::Tensor& sample) {
  const double mean_sq = sample.to(torch::kDouble).pow(2).sum(-1).mean().item<double>();
  if (!(mean_sq > 0) || !std::isfinite(mean_sq)) return 1.0;
  return std::sqrt(static_cast<double>(sample.size(-1)) / mean_sq);
}

torch::Tensor SaeModel::NormalizeInputs(const torch::Tensor& x) const {
  if (config_.normalize_inputs == InputNormalization::kNone) return x;
  if (config_.normalize_inputs == InputNormalization::kDatasetConstant) return x * config_.input_scale;
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
  const auto top = pre.topk(std::min(config_.k, pre.size(1)), 1, true, true);
  return {std::get<1>(top), std::get<0>(top)};
}

std::optional<Selection> SaeModel::SelectAux(const torch::Tensor& pre,
                                             const torch::Tensor& dead_mask) const {
  if (config_.architecture != Architecture::kTopK || !dead_mask.defined()) return std::nullopt;
  const auto dead = dead_mask.nonzero().squeeze(1);
  if (dead.numel() == 0) return std::nullopt;
  const int64_t k_aux = std::min(config_.k_aux, dead.numel());
  const auto top = pre.index_select(1, dead).topk(k_aux, 1, true, true);
  const auto local = std::get<1>(top);
  return Selection{dead.index_select(0, local.flatten()).view_as(local), std::get<0>(top)};
}

ForwardOutput SaeModel::TrainingForward(const torch::Tensor& x, const torch::Tensor& dead_mask,
                                        ComputePath path) const {
  auto out = Forward(x, dead_mask, path, nullptr);
  TORCH_CHECK(out.ok(), std::string(out.status().message()));
  FinalizeMetrics(*out, config_.d_in);
  return *std::move(out);
}

absl::StatusOr<ForwardOutput> SaeModel::ParallelTrainingForward(const torch::Tensor& x,
                                                                const torch::Tensor& dead_mask,
                                                                const ParallelForward& parallel) const {
  return Forward(x, dead_mask, ComputePath::kSparse, &parallel);
}

absl::Status SaeModel::ReduceShardGradients(const ForwardOutput& out, Communicator* shards) const {
  if (!out.encoder_b_pre.defined()) return absl::OkStatus();
  torch::NoGradGuard no_grad;
  torch::Tensor g = out.encoder_b_pre.grad();
  g = g.defined() ? g.contiguous() : torch::zeros_like(params_.b_pre);
  auto st = shards->AllReduce(g, ReduceOp::kSum);
  if (!st.ok()) return st;
  auto grad = params_.b_pre.mutable_grad();
  if (grad.defined()) {
    grad.add_(g);
  } else {
    params_.b_pre.mutable_grad() = g;
  }
  return absl::OkStatus();
}

absl::StatusOr<ForwardOutput> SaeModel::Forward(const torch::Tensor& x, const torch::Tensor& dead_mask,
                                                ComputePath path, const ParallelForward* parallel) const {
  const auto& p = params_;
  const int64_t batch = x.size(0);
  Communicator* shards = parallel != nullptr && parallel->shards != nullptr && parallel->shards->size() > 1
                             ? parallel->shards : nullptr;
  Communicator* replicas = parallel != nullptr && parallel->replicas != nullptr &&
                                   parallel->replicas->size() > 1
                               ? parallel->replicas : nullptr;
  const double num_replicas = replicas != nullptr ? replicas->size() : 1;
  const bool topk = config_.architecture == Architecture::kTopK;
  if (shards != nullptr && path != ComputePath::kSparse) {
    return absl::InvalidArgumentError("the dense reference path runs unsharded only");
  }
  StepProfile* profile = parallel != nullptr ? parallel->profile : nullptr;
  ForwardOutput out;
  torch::Tensor x_centered;
  {
    torch::NoGradGuard no_grad;
    x_centered = x - p.b_pre;
  }
  // The sparse TopK step never holds the B x n pre-activations: the encoder runs in chunks of
  // latents feeding running top-k's (engine/chunked_encoder.h). The dense reference (and ReLU,
  // whose active set has no fixed width) keeps the whole matrix and LibTorch's topk.
  const bool chunked = path == ComputePath::kSparse && topk;
  const int64_t main_width = shards != nullptr ? parallel->k_in : std::min(config_.k, latent_count_);
  int64_t aux_width = 0;
  if (topk && dead_mask.defined()) {
    if (shards != nullptr) {
      aux_width = parallel->dead_total > 0 ? parallel->k_aux_in : 0;
    } else {
      // The trainer counted the dead latents already (its one host read of them per step).
      const int64_t dead = parallel != nullptr ? parallel->dead_total : dead_mask.sum().item<int64_t>();
      aux_width = std::min(config_.k_aux, dead);
    }
  }
  std::optional<ScopedPhase> phase;  // the phase now running (reassigned as the pass goes on)
  Selection main;
  std::optional<Selection> aux;
  torch::Tensor pre_values;
  if (chunked) {
    EncoderCandidates candidates =
        SelectByChunkedEncoder(x_centered, p, main_width, dead_mask, aux_width,
                               config_.compute_dtype, config_.encoder_chunk_latents, profile);
    main = std::move(candidates.main);
    aux = std::move(candidates.aux);
    phase.emplace(profile, &StepProfile::topk);
  } else {
    torch::NoGradGuard no_grad;
    {
      ScopedPhase encoder(profile, &StepProfile::encoder);
      pre_values = PreActivations(x, p);
    }
    phase.emplace(profile, &StepProfile::topk);
    main = SelectMain(pre_values);
    aux = SelectAux(pre_values, dead_mask);
  }

  // Sharded: the local candidates' values are all-gathered and every shard makes the same cut;
  // `*_keep` marks the candidates that made the global cut (undefined: all of them).
  torch::Tensor main_keep, aux_keep;
  torch::Tensor overflow_tokens = torch::zeros({}, x.options().dtype(torch::kLong));
  if (shards != nullptr && topk) {
    torch::NoGradGuard no_grad;
    phase.emplace(profile, &StepProfile::allgather);
    auto gathered = shards->AllGather(main.values);
    if (!gathered.ok()) return gathered.status();
    phase.emplace(profile, &StepProfile::topk);
    const bool can_overflow = parallel->k_in < std::min(config_.k, latent_count_);
    GlobalCut cut = CutGlobalTopK(*gathered, shards->rank(), config_.k, can_overflow);
    main_keep = cut.keep;
    overflow_tokens = cut.overflow.sum();
    if (aux_width > 0) {
      // AuxK over the dead latents, with the same exchange; -inf fills the slots of a shard with
      // fewer dead latents than it may offer (and of one with none, which selected nothing).
      if (!aux) {
        aux = Selection{torch::zeros({batch, aux_width}, x.options().dtype(torch::kLong)),
                        torch::full({batch, aux_width}, -std::numeric_limits<float>::infinity(),
                                    x.options().dtype(torch::kFloat))};
      }
      phase.emplace(profile, &StepProfile::allgather);
      auto gathered_aux = shards->AllGather(aux->values);
      if (!gathered_aux.ok()) return gathered_aux.status();
      phase.emplace(profile, &StepProfile::topk);
      const int64_t k_aux = std::min(config_.k_aux, parallel->dead_total);
      aux_keep = CutGlobalTopK(*gathered_aux, shards->rank(), k_aux, false).keep;
      aux->values = aux->values.masked_fill(aux_keep.logical_not(), 0);
    }
  }

  phase.emplace(profile, &StepProfile::decode);
  torch::Tensor x_hat, acts, e_hat;
  if (path == ComputePath::kSparse) {
    // A sharded encoder gives only its part of b_pre's gradient: route it to a separate leaf.
    torch::Tensor b_pre_for_encoder = p.b_pre;
    if (shards != nullptr) {
      out.encoder_b_pre = p.b_pre.detach().clone().set_requires_grad(true);
      b_pre_for_encoder = out.encoder_b_pre;
    }
    // One gather for the main and AuxK selections, so W_enc gets a single gradient buffer.
    const int64_t k_main = main.indices.size(1);
    auto indices = aux ? torch::cat({main.indices, aux->indices}, 1) : main.indices;
    auto values = aux ? torch::cat({main.values, aux->values}, 1) : main.values;
    const auto selected =
        EncoderAtIndices(x_centered, p.w_enc, p.b_enc, b_pre_for_encoder, indices, values);
    acts = torch::relu(selected.narrow(1, 0, k_main));
    if (main_keep.defined()) acts = acts * main_keep.to(acts.scalar_type());
    const auto partial = SparseDecode(acts, main.indices, p.w_dec);
    phase.emplace(profile, &StepProfile::allreduce);
    auto decoded = SumOverShards(partial, shards);
    if (!decoded.ok()) return decoded.status();
    phase.emplace(profile, &StepProfile::decode);
    x_hat = *decoded + p.b_pre;
    if (aux) {
      auto aux_acts = torch::relu(selected.narrow(1, k_main, aux->indices.size(1)));
      if (aux_keep.defined()) aux_acts = aux_acts * aux_keep.to(aux_acts.scalar_type());
      const auto aux_partial = SparseDecode(aux_acts, aux->indices, p.w_dec);
      phase.emplace(profile, &StepProfile::allreduce);
      auto e = SumOverShards(aux_partial, shards);
      if (!e.ok()) return e.status();
      phase.emplace(profile, &StepProfile::decode);
      e_hat = *e;
    }
  } else {
    const auto pre_dense = PreActivations(x, p);
    const auto relu_pre = torch::relu(pre_dense);
    torch::Tensor z = relu_pre;
    if (topk) z = relu_pre * torch::zeros_like(pre_dense).scatter_(1, main.indices, 1.0);
    x_hat = z.mm(p.w_dec) + p.b_pre;
    acts = z.gather(1, main.indices);
    if (aux) {
      const auto z_aux = relu_pre * torch::zeros_like(pre_dense).scatter_(1, aux->indices, 1.0);
      e_hat = z_aux.mm(p.w_dec);
    }
  }

  // Loss: (sum of this replica's squared errors) * R / (global variance), so that the replicas'
  // averaged gradients are the gradient of the whole batch's FVU. Everything below stays on the
  // device: the statistics are gathered into out.sums for a later read (FinalizeMetrics).
  const auto error = x - x_hat;
  auto variance = GlobalTotalVariance(x, replicas);
  if (!variance.ok()) return variance.status();
  const auto error_sq = error.pow(2).sum();
  out.loss = error_sq * (num_replicas / variance->clamp_min(1e-30));
  const auto stat = x.options().dtype(torch::kDouble);
  torch::Tensor aux_error_sq = torch::zeros({}, stat), residual_variance = torch::zeros({}, stat);
  if (aux) {
    // AuxK fits the dead latents' reconstruction (no b_pre) to the detached residual. It counts
    // only when the residual varies and the term is finite; without a host read, that choice is
    // a where(), which also keeps its gradient out when it is off.
    const auto residual = error.detach();
    auto rv = GlobalTotalVariance(residual, replicas);
    if (!rv.ok()) return rv.status();
    const auto aux_sq = (residual - e_hat).pow(2).sum();
    const auto used = (*rv > 0).logical_and(torch::isfinite(aux_sq));
    const auto term = aux_sq * (config_.auxk_alpha * num_replicas / rv->clamp_min(1e-30));
    out.loss = out.loss + torch::where(used, term, torch::zeros_like(term));
    aux_error_sq = torch::where(used, aux_sq.detach().to(torch::kDouble), aux_error_sq);
    residual_variance = torch::where(used, *rv, residual_variance);
  }
  torch::Tensor l1 = torch::zeros({}, stat);
  if (config_.architecture == Architecture::kReLU) {
    // Mean per-token L1 of the global batch; this shard's latents' part.
    const auto l1_sum = acts.sum();
    out.loss = out.loss + config_.l1_coefficient * num_replicas / static_cast<double>(batch * num_replicas) * l1_sum;
    l1 = l1_sum.detach().to(torch::kDouble);
  }
  out.indices = main.indices;
  out.acts = acts.detach();
  out.sums = torch::stack({error_sq.detach().to(torch::kDouble), aux_error_sq, l1,
                           (out.acts > 0).sum().to(torch::kDouble), overflow_tokens.to(torch::kDouble),
                           torch::full({}, static_cast<double>(batch), stat), variance->detach(),
                           residual_variance.detach()});
  if (shards != nullptr || parallel != nullptr) {
    out.num_dead = parallel->dead_total;
  } else {
    out.num_dead = dead_mask.defined() ? dead_mask.sum().item<int64_t>() : 0;
  }
  return out;
}

Selection SaeModel::Encode(const torch::Tensor& x, const SaeParameters& params) const {
  torch::NoGradGuard no_grad;
  Selection s;
  if (config_.architecture == Architecture::kTopK) {
    // Float32 for evaluation whatever the training dtype; no B x n matrix here either.
    s = SelectByChunkedEncoder(x - params.b_pre, params, std::min(config_.k, params.w_enc.size(0)),
                               torch::Tensor(), 0, ComputeDtype::kFloat32,
                               config_.encoder_chunk_latents, nullptr)
            .main;
  } else {
    s = SelectMain(PreActivations(x, params));
  }
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
