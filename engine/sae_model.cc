#include "engine/sae_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <utility>

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
  s.possibly_truncated = v[kPossiblyTruncated];
  s.truncated = v[kTruncated];
  s.prefix_error_sq = v[kPrefixErrorSq];
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
  out.prefix_fvu = s.prefix_error_sq / std::max(s.variance, 1e-30);
  out.overflow_rate = s.possibly_truncated / tokens;
  out.truncated_rate = s.truncated / tokens;
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
  if (config_.architecture == Architecture::kJumpReLU) params_.log_threshold = torch::zeros({latent_count_}, opts);
  for (auto& p : params_.All()) p.set_requires_grad(true);
  activation_ = MakeActivationFunction(config_);
}

SaeModel SaeModel::ForInference(const ModelConfig& config) {
  SaeModel m;
  m.config_ = config;
  m.latent_count_ = config.num_latents;
  m.activation_ = MakeActivationFunction(config);
  return m;
}

SaeModel::SaeModel(const SaeModel& other)
    : config_(other.config_),
      activation_(MakeActivationFunction(other.config_)),
      latent_begin_(other.latent_begin_),
      latent_count_(other.latent_count_),
      params_(other.params_) {}

SaeModel& SaeModel::operator=(const SaeModel& other) {
  if (this != &other) *this = SaeModel(other);
  return *this;
}

void SaeModel::set_inference_threshold(double threshold) {
  config_.inference_threshold = threshold;
  activation_->set_inference_threshold(threshold);
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
  if (params_.log_threshold.defined()) {
    params_.log_threshold.fill_(std::log(config_.jumprelu_initial_threshold));
  }
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


ForwardOutput SaeModel::TrainingForward(const torch::Tensor& x, const torch::Tensor& dead_mask,
                                        ComputePath path, int64_t k) const {
  ParallelForward single;
  single.k = k;
  single.dead_total = dead_mask.defined() ? dead_mask.sum().item<int64_t>() : 0;
  auto out = Forward(x, dead_mask, path, &single);
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

namespace {

// AuxK's per-token selection over the dead latents of the dense pre-activations (the reference).
std::optional<Selection> DenseAuxSelection(const torch::Tensor& pre, const torch::Tensor& dead_mask,
                                           int64_t width) {
  if (width <= 0 || !dead_mask.defined()) return std::nullopt;
  const auto dead = dead_mask.nonzero().squeeze(1);
  if (dead.numel() == 0) return std::nullopt;
  const auto top = pre.index_select(1, dead).topk(std::min(width, dead.numel()), 1, true, true);
  const auto local = std::get<1>(top);
  return Selection{dead.index_select(0, local.flatten()).view_as(local), std::get<0>(top), torch::Tensor()};
}

// The group of each selected latent among Matryoshka's prefixes: group g holds the latents
// [prefixes[g - 1], prefixes[g]) (global ids).
torch::Tensor PrefixGroups(const torch::Tensor& global_ids, const std::vector<int64_t>& prefixes) {
  const auto bounds = torch::tensor(std::vector<int64_t>(prefixes.begin(), prefixes.end() - 1),
                                    global_ids.options());
  return torch::bucketize(global_ids, bounds, /*out_int32=*/false, /*right=*/true);
}

// What the three phases of one forward pass share.
struct ForwardContext {
  const SaeParameters* params;
  const ModelConfig* config;
  const ActivationFunction* activation;
  int64_t latent_begin;   // this shard's first latent
  ComputePath path;
  torch::Tensor x;           // normalised inputs [B, d]
  torch::Tensor x_centered;  // x - b_pre, no gradient
  Communicator* shards;      // null unless sharded (size > 1)
  Communicator* replicas;    // null unless data-parallel (size > 1)
  double num_replicas;
  int64_t k;                 // this step's k
  torch::Tensor dead_mask;   // AuxK's (undefined: no AuxK)
  int64_t dead_total;        // over every shard
  int64_t aux_width;         // AuxK candidates per token (0: none this step)
  const ParallelForward* parallel;
  StepProfile* profile;
};

struct SelectedLatents {
  Selection main;
  std::optional<Selection> aux;
  torch::Tensor possibly_truncated, truncated;  // 0-d int64 token counts
  torch::Tensor pre_dense;                      // the dense reference's [B, n], with gradient
};

struct DecodedLatents {
  torch::Tensor acts;     // [B, W] (detached by the loss phase for the metrics)
  torch::Tensor indices;  // [B, W] local latent ids
  torch::Tensor penalty;  // the architecture's sparsity term (undefined: none)
  torch::Tensor e_hat;    // AuxK's reconstruction of the residual (undefined: no AuxK)
  std::vector<torch::Tensor> reconstructions;  // per prefix, the last the whole dictionary
  torch::Tensor encoder_b_pre;                 // sharded: b_pre's encoder-side leaf
};

// Phase 1: which latents activate. The sparse step never holds the B x n pre-activations (the
// activation functions run the chunked encoder, engine/chunked_encoder.h); the dense reference
// does. Sharded, AuxK's candidates are cut here too.
absl::StatusOr<SelectedLatents> SelectLatents(const ForwardContext& c) {
  SelectedLatents out;
  if (c.path == ComputePath::kSparse) {
    SelectionInputs in;
    in.x_centered = c.x_centered;
    in.params = c.params;
    in.k = c.k;
    in.shards = c.shards;
    if (c.parallel != nullptr) {
      in.capacity_factor = c.parallel->capacity_factor;
      in.exact = c.parallel->exact;
    }
    in.dead_mask = c.aux_width > 0 ? c.dead_mask : torch::Tensor();
    in.aux_width = c.aux_width;
    in.profile = c.profile;
    auto selected = c.activation->Select(in);
    if (!selected.ok()) return selected.status();
    out.main = std::move(selected->main);
    out.aux = std::move(selected->aux);
    out.possibly_truncated = selected->possibly_truncated;
    out.truncated = selected->truncated;
  } else {
    {
      ScopedPhase encoder(c.profile, &StepProfile::encoder);
      out.pre_dense = torch::addmm(c.params->b_enc, c.x - c.params->b_pre, c.params->w_enc.t());
    }
    torch::NoGradGuard no_grad;
    out.aux = DenseAuxSelection(out.pre_dense.detach(), c.dead_mask, c.aux_width);
    out.possibly_truncated = out.truncated = torch::zeros({}, c.x.options().dtype(torch::kLong));
  }
  // Sharded AuxK: the shards' candidates are all-gathered and every shard makes the same cut;
  // -inf fills the slots of a shard with fewer dead latents than it may offer (and of one with
  // none, which selected nothing).
  if (c.shards != nullptr && c.aux_width > 0) {
    torch::NoGradGuard no_grad;
    const int64_t batch = c.x.size(0);
    if (!out.aux) {
      out.aux = Selection{torch::zeros({batch, c.aux_width}, c.x.options().dtype(torch::kLong)),
                          torch::full({batch, c.aux_width}, -std::numeric_limits<float>::infinity(),
                                      c.x.options().dtype(torch::kFloat)),
                          torch::Tensor()};
    }
    std::optional<ScopedPhase> phase(std::in_place, c.profile, &StepProfile::allgather);
    auto gathered = c.shards->AllGather(out.aux->values);
    if (!gathered.ok()) return gathered.status();
    phase.emplace(c.profile, &StepProfile::topk);
    out.aux->keep = CutGlobalTopK(*gathered, c.shards->rank(), std::min(c.config->k_aux, c.dead_total), false).keep;
    out.aux->values = out.aux->values.masked_fill(out.aux->keep.logical_not(), 0);
  }
  return out;
}

// Phase 2: the activations of the selected latents and their reconstructions (one per
// Matryoshka prefix), summed over the shards.
absl::StatusOr<DecodedLatents> DecodeLatents(const ForwardContext& c, SelectedLatents& s) {
  const auto& p = *c.params;
  const ActivationFunction& activation = *c.activation;
  const std::vector<int64_t> prefixes = activation.Prefixes();
  DecodedLatents out;
  std::optional<ScopedPhase> phase(std::in_place, c.profile, &StepProfile::decode);
  if (c.path == ComputePath::kDenseReference) {
    auto [z, penalty] = activation.DenseActivations(s.pre_dense, p, c.k);
    out.penalty = penalty;
    for (int64_t m : prefixes) out.reconstructions.push_back(z.narrow(1, 0, m).mm(p.w_dec.narrow(0, 0, m)) + p.b_pre);
    if (s.aux) {
      const auto mask = torch::zeros_like(s.pre_dense).scatter_(1, s.aux->indices, 1.0);
      out.e_hat = (torch::relu(s.pre_dense) * mask).mm(p.w_dec);
    }
    // The selection, for the dead-latent tracking and the metrics: each token's active latents.
    torch::NoGradGuard no_grad;
    const int64_t width = std::max<int64_t>(1, (z.detach() > 0).sum(1).max().item<int64_t>());
    const auto top = z.detach().topk(width, 1, true, true);
    out.indices = std::get<1>(top);
    out.acts = std::get<0>(top);
    return out;
  }
  // A sharded encoder gives only its part of b_pre's gradient: route it to a separate leaf.
  torch::Tensor b_pre_for_encoder = p.b_pre;
  if (c.shards != nullptr) {
    out.encoder_b_pre = p.b_pre.detach().clone().set_requires_grad(true);
    b_pre_for_encoder = out.encoder_b_pre;
  }
  // One gather for the main and AuxK selections, so W_enc gets a single gradient buffer.
  const Selection& main = s.main;
  const int64_t k_main = main.indices.size(1);
  const auto indices = s.aux ? torch::cat({main.indices, s.aux->indices}, 1) : main.indices;
  const auto values = s.aux ? torch::cat({main.values, s.aux->values}, 1) : main.values;
  const auto selected = EncoderAtIndices(c.x_centered, p.w_enc, p.b_enc, b_pre_for_encoder, indices, values);
  auto pre_main = selected.narrow(1, 0, k_main);
  if (main.keep.defined()) {
    // A padded slot can neither activate nor pass a gradient, whatever the architecture.
    pre_main = pre_main.masked_fill(main.keep.logical_not(), -1e30);
  }
  out.acts = activation.Activate(pre_main, main.indices, p);
  out.indices = main.indices;
  const int64_t rows_total = c.x.size(0) * static_cast<int64_t>(c.num_replicas);
  auto penalty = activation.Penalty(pre_main, out.acts, main.indices, p, rows_total, c.shards);
  if (!penalty.ok()) return penalty.status();
  out.penalty = *penalty;
  std::vector<torch::Tensor> partials;
  if (prefixes.size() == 1) {
    partials.push_back(SparseDecode(out.acts, main.indices, p.w_dec));
  } else {
    // Each group of latents decodes on its own; the prefixes' reconstructions are their running
    // sums.
    const auto groups = PrefixGroups(main.indices + c.latent_begin, prefixes);
    for (size_t g = 0; g < prefixes.size(); ++g) {
      const auto in_group = (groups == static_cast<int64_t>(g)).to(out.acts.scalar_type());
      partials.push_back(SparseDecode(out.acts * in_group, main.indices, p.w_dec));
    }
  }
  phase.emplace(c.profile, &StepProfile::allreduce);
  auto decoded = SumOverShards(torch::stack(partials), c.shards);
  if (!decoded.ok()) return decoded.status();
  phase.emplace(c.profile, &StepProfile::decode);
  const auto running = decoded->cumsum(0);
  for (size_t g = 0; g < prefixes.size(); ++g) out.reconstructions.push_back(running[g] + p.b_pre);
  if (s.aux) {
    auto aux_acts = torch::relu(selected.narrow(1, k_main, s.aux->indices.size(1)));
    if (s.aux->keep.defined()) aux_acts = aux_acts * s.aux->keep.to(aux_acts.scalar_type());
    const auto aux_partial = SparseDecode(aux_acts, s.aux->indices, p.w_dec);
    phase.emplace(c.profile, &StepProfile::allreduce);
    auto e = SumOverShards(aux_partial, c.shards);
    if (!e.ok()) return e.status();
    out.e_hat = *e;
  }
  return out;
}

// Phase 3: the loss, (sum of this replica's squared errors) * R / (global variance), so that the
// replicas' averaged gradients are the gradient of the whole batch's FVU; Matryoshka sums it over
// its prefixes; plus AuxK and the penalty. Everything stays on the device: the statistics are
// gathered into out.sums for a later read (FinalizeMetrics).
absl::StatusOr<ForwardOutput> ComputeLoss(const ForwardContext& c, const SelectedLatents& s, DecodedLatents& d) {
  ScopedPhase phase(c.profile, &StepProfile::decode);
  ForwardOutput out;
  const auto& x = c.x;
  const auto stat = x.options().dtype(torch::kDouble);
  const auto error = x - d.reconstructions.back();
  auto variance = GlobalTotalVariance(x, c.replicas);
  if (!variance.ok()) return variance.status();
  const auto scale = c.num_replicas / variance->clamp_min(1e-30);
  const auto error_sq = error.pow(2).sum();
  out.loss = error_sq * scale;
  torch::Tensor prefix_error_sq = torch::zeros({}, stat);
  for (size_t g = 0; g + 1 < d.reconstructions.size(); ++g) {
    const auto prefix_sq = (x - d.reconstructions[g]).pow(2).sum();
    out.loss = out.loss + prefix_sq * scale;
    prefix_error_sq = prefix_error_sq + prefix_sq.detach().to(torch::kDouble);
  }
  torch::Tensor aux_error_sq = torch::zeros({}, stat), residual_variance = torch::zeros({}, stat);
  if (d.e_hat.defined()) {
    // AuxK fits the dead latents' reconstruction (no b_pre) to the detached residual. It counts
    // only when the residual varies and the term is finite; without a host read, that choice is
    // a where(), which also keeps its gradient out when it is off.
    const auto residual = error.detach();
    auto rv = GlobalTotalVariance(residual, c.replicas);
    if (!rv.ok()) return rv.status();
    const auto aux_sq = (residual - d.e_hat).pow(2).sum();
    const auto used = (*rv > 0).logical_and(torch::isfinite(aux_sq));
    const auto term = aux_sq * (c.config->auxk_alpha * c.num_replicas / rv->clamp_min(1e-30));
    out.loss = out.loss + torch::where(used, term, torch::zeros_like(term));
    aux_error_sq = torch::where(used, aux_sq.detach().to(torch::kDouble), aux_error_sq);
    residual_variance = torch::where(used, *rv, residual_variance);
  }
  // The penalties are means over the global batch: scaled by R like the reconstruction term.
  if (d.penalty.defined()) out.loss = out.loss + d.penalty * c.num_replicas;
  out.encoder_b_pre = d.encoder_b_pre;
  out.indices = d.indices;
  out.acts = d.acts.detach();
  if (c.activation->FitsInferenceThreshold()) {
    torch::NoGradGuard no_grad;
    out.min_kept_activation =
        torch::where(out.acts > 0, out.acts, std::numeric_limits<float>::infinity()).min().to(torch::kFloat);
  }
  out.sums = torch::stack({error_sq.detach().to(torch::kDouble), aux_error_sq,
                           out.acts.sum().to(torch::kDouble), (out.acts > 0).sum().to(torch::kDouble),
                           s.possibly_truncated.to(torch::kDouble), s.truncated.to(torch::kDouble), prefix_error_sq,
                           torch::full({}, static_cast<double>(x.size(0)), stat), variance->detach(),
                           residual_variance.detach()});
  out.num_dead = c.dead_total;
  return out;
}

}  // namespace

absl::StatusOr<ForwardOutput> SaeModel::Forward(const torch::Tensor& x, const torch::Tensor& dead_mask,
                                                ComputePath path, const ParallelForward* parallel) const {
  ForwardContext c;
  c.params = &params_;
  c.config = &config_;
  c.activation = activation_.get();
  c.latent_begin = latent_begin_;
  c.path = path;
  c.x = x;
  {
    torch::NoGradGuard no_grad;
    c.x_centered = x - params_.b_pre;
  }
  c.shards = parallel != nullptr && parallel->shards != nullptr && parallel->shards->size() > 1 ? parallel->shards
                                                                                                 : nullptr;
  c.replicas = parallel != nullptr && parallel->replicas != nullptr && parallel->replicas->size() > 1
                   ? parallel->replicas : nullptr;
  c.num_replicas = c.replicas != nullptr ? c.replicas->size() : 1;
  if (c.shards != nullptr && path != ComputePath::kSparse) {
    return absl::InvalidArgumentError("the dense reference path runs unsharded only");
  }
  c.k = parallel != nullptr && parallel->k > 0 ? parallel->k : config_.k;
  c.dead_mask = dead_mask;
  c.dead_total = parallel != nullptr ? parallel->dead_total : 0;
  // AuxK asks each token for its best dead latents (the TopK family; the caller passes no
  // dead_mask when AuxK is off).
  c.aux_width = 0;
  if (activation_->UsesAuxK() && dead_mask.defined() && c.dead_total > 0) {
    c.aux_width = c.shards != nullptr ? parallel->k_aux_in : std::min(config_.k_aux, c.dead_total);
  }
  c.parallel = parallel;
  c.profile = parallel != nullptr ? parallel->profile : nullptr;

  auto selected = SelectLatents(c);
  if (!selected.ok()) return selected.status();
  auto decoded = DecodeLatents(c, *selected);
  if (!decoded.ok()) return decoded.status();
  return ComputeLoss(c, *selected, *decoded);
}

Selection SaeModel::Encode(const torch::Tensor& x, const SaeParameters& params) const {
  torch::NoGradGuard no_grad;
  return activation_->Encode(x - params.b_pre, params);
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
