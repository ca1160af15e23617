#include "engine/trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <future>
#include <limits>
#include <optional>

#include "base/status_macros.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/activation/architecture_names.h"
#include "engine/checkpoint.h"
#include "engine/data/shard_broadcast_source.h"
#include "engine/device.h"
#include "engine/eval/suite.h"
#include "engine/host_reads.h"
#include "engine/lm/language_model.h"
#include "engine/safetensors.h"
#include "engine/runtime.h"
#include "engine/sharded_selection.h"

namespace saegrid {
namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// All-reduces a few doubles in one call, on the device the group's collectives take.
absl::Status AllReduceScalars(Communicator* comm, ReduceOp op, std::vector<double*> values) {
  if (comm->size() == 1) return absl::OkStatus();
  auto host = torch::empty({static_cast<int64_t>(values.size())}, torch::kDouble);
  for (size_t i = 0; i < values.size(); ++i) host.data_ptr<double>()[i] = *values[i];
  auto t = host.to(comm->device());
  SAEGRID_RETURN_IF_ERROR(comm->AllReduce(t, op));
  host = t.to(torch::kCPU);
  for (size_t i = 0; i < values.size(); ++i) *values[i] = host.data_ptr<double>()[i];
  return absl::OkStatus();
}

// A checkpoint can only continue a run of the same model shape.
absl::Status CheckCompatible(const ModelConfig& want, const ModelConfig& have, const std::string& dir) {
  auto mismatch = [&](const char* field, auto a, auto b) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot resume from ", dir, ": model.", field, " is ", a, " in the config but ", b,
        " in the checkpoint (use a new checkpoint.output_dir or set checkpoint.resume: false)"));
  };
  if (want.architecture != have.architecture) {
    return mismatch("architecture", ArchitectureName(want.architecture), ArchitectureName(have.architecture));
  }
  if (want.d_in != have.d_in) return mismatch("d_in", want.d_in, have.d_in);
  if (want.num_latents != have.num_latents) return mismatch("num_latents", want.num_latents, have.num_latents);
  if (ArchitectureUsesK(want.architecture) && want.k != have.k) return mismatch("k", want.k, have.k);
  if (want.architecture == Architecture::kMatryoshka && want.matryoshka_prefixes != have.matryoshka_prefixes) {
    return absl::FailedPreconditionError("cannot resume from " + dir +
                                         ": model.matryoshka_prefixes differs from the checkpoint");
  }
  if (want.normalize_inputs != have.normalize_inputs) {
    return absl::FailedPreconditionError("cannot resume from " + dir +
                                         ": model.normalize_inputs differs from the checkpoint");
  }
  return absl::OkStatus();
}

// The true features evaluation compares the decoder with: evaluation.ground_truth_path's
// "features" [F, d_in], else the data's own (the synthetic generator's), else none.
absl::StatusOr<torch::Tensor> LoadGroundTruth(const TrainConfig& config, const ActivationSource& source, int64_t d) {
  const std::string& path = config.evaluation.ground_truth_path;
  if (path.empty()) return source.ground_truth();
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return absl::InvalidArgumentError(absl::StrCat("evaluation.ground_truth_path: ", file.status().message()));
  auto features = file->Get("features");
  if (!features.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation.ground_truth_path ", path, ": no tensor \"features\""));
  }
  if (features->dim() != 2 || features->size(1) != d || features->size(0) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation.ground_truth_path ", path, ": \"features\" is ",
                                                   c10::str(features->sizes()), ", expected [F, ", d, "] (F > 0)"));
  }
  return features->to(torch::kFloat).clone();
}

// MSE in the raw activations' units: the SAE sees s x under a dataset-wide input scale s (FVU is
// the same either way). Layer-normalised inputs have no such units; their MSE stays as computed.
double RawMse(double mse, const ModelConfig& model) {
  if (model.normalize_inputs != InputNormalization::kDatasetConstant) return mse;
  return mse / (model.input_scale * model.input_scale);
}

// The SAELens metadata of where the activations came from.
void DescribeDataSource(const DataConfig& data, CheckpointContents* c) {
  if (data.uses_language_model()) {
    const auto& lm = data.language_model;
    c->dataset_path = lm.tokens_path;
    c->model_name = std::filesystem::path(lm.model_path).lexically_normal().filename().string();
    if (c->model_name.empty()) c->model_name = std::filesystem::path(lm.model_path).lexically_normal().parent_path().filename().string();
    auto hook = ParseHookpoint(lm.hookpoint, std::numeric_limits<int64_t>::max());
    c->hook_name = hook.ok() ? TransformerLensName(*hook) : lm.hookpoint;
    c->context_size = lm.context_length;
    return;
  }
  c->dataset_path = data.use_synthetic ? "synthetic" : data.path;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TrainConfig& config,
                                                         std::unique_ptr<Gang> gang) {
  std::unique_ptr<Trainer> t(new Trainer());
  t->config_ = config;
  t->gang_ = gang ? std::move(gang) : SingleProcessGang();
  const ParallelLayout& layout = t->gang_->layout;
  t->threads_ = ConfigureThreads(config.runtime.num_threads);
  SAEGRID_RETURN_IF_ERROR(ApplyKernelSettings(config.parallelism));
  auto device = ResolveTrainingDevice(config.parallelism, layout.world_size());
  if (!device.ok()) return device.status();
  t->device_ = *device;
  if (config.data.batch_size % layout.replicas != 0) {
    return absl::InvalidArgumentError(absl::StrCat("data.batch_size (", config.data.batch_size,
                                                   ") must be divisible by parallelism.replicas (",
                                                   layout.replicas, ")"));
  }
  if (config.data.uses_language_model() && layout.shards > 1) {
    // A model's activations are made once per replica, on shard 0, and broadcast to its other
    // shards (engine/data/shard_broadcast_source.h).
    absl::StatusOr<std::unique_ptr<ActivationSource>> opened = std::unique_ptr<ActivationSource>();
    if (layout.shard() == 0) {
      opened = OpenActivationSource(config.data, layout.replica(), layout.replicas, t->device_.is_cuda(), t->device_);
    }
    auto shared = ShareAcrossShards(opened.ok() ? *std::move(opened) : nullptr, t->gang_->shard_group.get(),
                                    config.data.batch_size / layout.replicas);
    if (!opened.ok()) return opened.status();
    if (!shared.ok()) return shared.status();
    t->source_ = *std::move(shared);
  } else {
    auto source = OpenActivationSource(config.data, layout.replica(), layout.replicas, t->device_.is_cuda(), t->device_);
    if (!source.ok()) return source.status();
    t->source_ = *std::move(source);
  }
  const int64_t d = t->source_->d_in();
  if (config.model.d_in > 0 && config.model.d_in != d) {
    return absl::InvalidArgumentError(absl::StrCat("model.d_in is ", config.model.d_in,
                                                   " but the activations in data have width ", d));
  }
  const ModelConfig model = ResolveModelConfig(config.model, d);
  if (ArchitectureUsesK(model.architecture) && std::max(model.k, model.k_initial) > model.num_latents) {
    return absl::InvalidArgumentError(absl::StrCat("model.k (", std::max(model.k, model.k_initial), ") exceeds the ",
                                                   model.num_latents, " latents"));
  }
  for (int64_t prefix : model.matryoshka_prefixes) {
    if (model.architecture == Architecture::kMatryoshka && prefix >= model.num_latents) {
      return absl::InvalidArgumentError(absl::StrCat("model.matryoshka_prefixes: ", prefix,
                                                     " is not below the ", model.num_latents, " latents"));
    }
  }
  if (model.num_latents % layout.shards != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model.num_latents (", model.num_latents,
                                                   ") must be divisible by parallelism.shards (",
                                                   layout.shards, ")"));
  }
  t->config_.model = model;
  auto truth = LoadGroundTruth(config, *t->source_, d);
  if (!truth.ok()) return truth.status();
  t->ground_truth_ = *truth;
  t->model_ = std::make_unique<SaeModel>(model, layout.shard(), layout.shards, t->device_);
  const int64_t per_shard = model.num_latents / layout.shards;
  const auto& pc = config.parallelism;
  t->parallel_.shards = t->gang_->shard_group.get();
  t->parallel_.replicas = t->gang_->replica_group.get();
  t->parallel_.capacity_factor = pc.capacity_factor;
  t->parallel_.exact = pc.exact;
  t->candidates_per_shard_ = CandidatesPerShard(model.k, layout.shards, per_shard, pc.capacity_factor, pc.exact);
  t->parallel_.k_aux_in = CandidatesPerShard(model.k_aux, layout.shards, per_shard, pc.capacity_factor, pc.exact);
  t->base_lr_ = config.optimizer.lr > 0 ? config.optimizer.lr : DefaultLearningRate(model.num_latents);
  t->total_steps_ = (config.training.total_tokens + config.data.batch_size - 1) / config.data.batch_size;
  t->adam_ = std::make_unique<Adam>(t->model_->params().All(), config.optimizer);
  if (config.optimizer.ema_decay > 0) {
    t->ema_ = std::make_unique<WeightEma>(t->model_->params().All(), config.optimizer.ema_decay);
  }
  t->dead_ = std::make_unique<DeadLatentTracker>(per_shard, t->device_);

  std::string latest;
  if (config.checkpoint.resume) {
    auto found = FindLatestCheckpoint(config.checkpoint.output_dir);
    if (!found.ok()) return found.status();
    latest = *found;
  }
  if (t->gang_->world->size() > 1) {
    // Resuming or starting fresh decides which collectives come next (a shared data source
    // samples at a fresh start): every rank must take the same branch.
    double low = latest.empty() ? 0 : 1, high = low;
    SAEGRID_RETURN_IF_ERROR(AllReduceScalars(t->gang_->world.get(), ReduceOp::kMin, {&low}));
    SAEGRID_RETURN_IF_ERROR(AllReduceScalars(t->gang_->world.get(), ReduceOp::kMax, {&high}));
    if (low != high) {
      return absl::FailedPreconditionError(
          "some ranks found a checkpoint to resume from and others did not: every rank must see the same "
          "checkpoint.output_dir (a shared filesystem)");
    }
  }
  if (!latest.empty()) {
    auto st = t->Resume(latest);
    if (!st.ok()) {
      return MarkRestoreFailure(
          absl::Status(st.code(), absl::StrCat("cannot restore checkpoint ", latest, ": ", st.message())));
    }
  } else {
    // The same sample on every rank (the global order's first rows): the same b_pre everywhere.
    auto sample = t->source_->Sample(model.geometric_median_samples);
    if (!sample.ok()) return sample.status();
    if (model.normalize_inputs == InputNormalization::kDatasetConstant) {
      // The same sample on every rank: the same constant everywhere.
      t->config_.model.input_scale = SaeModel::FitInputScale(*sample);
      t->model_->set_input_scale(t->config_.model.input_scale);
    }
    t->model_->Initialize(t->model_->NormalizeInputs(sample->to(t->device_)), config.training.seed);
    if (config.data.use_synthetic && t->is_leader()) {
      // The generator's true features, for evaluating other SAEs of the same data
      // (evaluation.ground_truth_path).
      std::error_code ec;
      std::filesystem::create_directories(config.checkpoint.output_dir, ec);
      const std::string path = (std::filesystem::path(config.checkpoint.output_dir) / "ground_truth.safetensors").string();
      SAEGRID_RETURN_IF_ERROR(WriteSafetensors(path, {{"features", t->ground_truth_.contiguous()}}));
    }
  }
  auto st = t->CheckSameStart();
  if (!st.ok()) return st;
  return t;
}

// Every rank must start from the same step: a rank that cannot see the checkpoint the others
// resume from (no shared output_dir) would otherwise train a different model silently.
absl::Status Trainer::CheckSameStart() {
  if (gang_->world->size() == 1) return absl::OkStatus();
  double low = static_cast<double>(step_), high = static_cast<double>(step_);
  SAEGRID_RETURN_IF_ERROR(AllReduceScalars(gang_->world.get(), ReduceOp::kMin, {&low}));
  SAEGRID_RETURN_IF_ERROR(AllReduceScalars(gang_->world.get(), ReduceOp::kMax, {&high}));
  if (low != high) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ranks start from different steps (", low, " to ", high, "): every rank must see the same "
        "checkpoint.output_dir (a shared filesystem)"));
  }
  return absl::OkStatus();
}

absl::Status Trainer::Resume(const std::string& step_dir) {
  auto saved_model = ReadCheckpointModel(step_dir);
  if (!saved_model.ok()) return saved_model.status();
  auto st = CheckCompatible(config_.model, *saved_model, step_dir);
  if (!st.ok()) return st;
  config_.model.input_scale = saved_model->input_scale;
  model_->set_input_scale(saved_model->input_scale);
  config_.model.inference_threshold = saved_model->inference_threshold;
  model_->set_inference_threshold(saved_model->inference_threshold);
  auto loaded = LoadCheckpoint(step_dir, model_->latent_begin(),
                               model_->latent_begin() + model_->latent_count());
  if (!loaded.ok()) return loaded.status();
  torch::NoGradGuard no_grad;
  auto params = model_->params().All();
  auto raw = loaded->raw.All();
  if (raw.size() != params.size()) {
    return absl::DataLossError(absl::StrCat(step_dir, ": the checkpoint holds ", raw.size(), " parameter tensors, ",
                                            "model.architecture ", ArchitectureName(config_.model.architecture),
                                            " has ", params.size()));
  }
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(raw[i]);
  const auto& s = loaded->state;
  for (size_t i = 0; i < params.size(); ++i) {
    adam_->exp_avg()[i].copy_(s.adam_exp_avg[i]);
    adam_->exp_avg_sq()[i].copy_(s.adam_exp_avg_sq[i]);
  }
  adam_->set_step(s.adam_step);
  if (ema_) {
    if (s.ema_shadow.empty()) {
      return absl::FailedPreconditionError("cannot resume from " + step_dir +
                                           ": optimizer.ema_decay is set but the checkpoint has no EMA");
    }
    for (size_t i = 0; i < params.size(); ++i) ema_->shadow()[i].copy_(s.ema_shadow[i]);
    ema_->set_updates(s.ema_updates);
  }
  dead_->tokens_since_fired().copy_(s.tokens_since_fired);
  dead_count_.reset();
  if (s.rng_state.defined()) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    gen.set_state(s.rng_state);
  }
  st = source_->Restore(s.cursor);
  if (!st.ok()) return st;
  step_ = s.step;
  tokens_ = s.tokens;
  overflow_tokens_ = s.overflow_tokens;
  truncated_tokens_ = s.truncated_tokens;
  resumed_ = true;
  resumed_from_ = step_dir;
  return absl::OkStatus();
}

absl::StatusOr<StepMetrics> Trainer::Step() { return Step(/*figures=*/true); }

// One step reads the device once (engine/host_reads.h): at its end, a packed copy of whether
// the loss was finite, the dead count after the step (the next step's AuxK width depends on it)
// and the overflow count, plus, when `figures`, every metric. The first step of a run reads the
// dead count once more; gradient clipping needs the norm before the update (one more read); a
// gang's collectives of host scalars wait as collectives do.
absl::StatusOr<StepMetrics> Trainer::Step(bool figures) {
  const auto start = std::chrono::steady_clock::now();
  auto batch = source_->NextBatch();
  if (!batch.ok()) return batch.status();
  const double data_seconds = Seconds(start);
  const int64_t global_tokens = config_.data.batch_size;
  const auto& mc = config_.model;
  const ActivationFunction& activation = model_->activation();
  // AuxK only where it applies and weighs something; the dead latents are counted regardless.
  const bool auxk = activation.UsesAuxK() && mc.auxk_alpha > 0;
  Communicator* shards = gang_->shard_group.get();
  Communicator* replicas = gang_->replica_group.get();
  StepMetrics m;
  m.has_figures = figures;
  m.profile.data = data_seconds;
  parallel_.profile = &m.profile;
  using Clock = std::chrono::steady_clock;

  const torch::Tensor dead_mask = auxk ? dead_->DeadMask(mc.dead_tokens_threshold) : torch::Tensor();
  if (auxk && !dead_count_) dead_count_ = ToHost(dead_mask.sum()).item<int64_t>();
  double dead_total = auxk ? static_cast<double>(*dead_count_) : 0;
  SAEGRID_RETURN_IF_ERROR(AllReduceScalars(shards, ReduceOp::kSum, {&dead_total}));
  parallel_.dead_total = static_cast<int64_t>(dead_total);
  parallel_.k = activation.UsesK() ? ScheduledK(mc, step_) : mc.k;

  for (auto& p : model_->params().All()) p.mutable_grad().reset();
  // Pinned on a GPU run, so the copy is asynchronous; a no-op on the CPU.
  const torch::Tensor x = batch->x.to(device_, /*non_blocking=*/true);
  auto out = model_->ParallelTrainingForward(model_->NormalizeInputs(x), dead_mask, parallel_);
  if (!out.ok()) return out.status();

  // Statistics of the global batch, still on the device: activations are per shard, everything
  // is per replica.
  auto phase_start = Clock::now();
  if (shards->size() > 1) {
    auto per_shard = out->sums.narrow(0, ForwardSums::kL1, 2);  // l1, active
    SAEGRID_RETURN_IF_ERROR(shards->AllReduce(per_shard, ReduceOp::kSum));
  }
  if (replicas->size() > 1) {
    auto additive = out->sums.narrow(0, 0, ForwardSums::kAdditive);
    SAEGRID_RETURN_IF_ERROR(replicas->AllReduce(additive, ReduceOp::kSum));
  }
  m.profile.allreduce += Seconds(phase_start);

  phase_start = Clock::now();
  out->loss.backward();
  m.profile.backward += Seconds(phase_start);
  phase_start = Clock::now();
  const auto params = model_->params().All();
  SAEGRID_RETURN_IF_ERROR(model_->ReduceShardGradients(*out, shards));
  if (replicas->size() > 1) {
    // One all-reduce for all gradients: the replicas' mean is the whole batch's gradient.
    std::vector<torch::Tensor> flat;
    for (const auto& p : params) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      flat.push_back(p.grad().reshape(-1));
    }
    auto buffer = torch::cat(flat);
    SAEGRID_RETURN_IF_ERROR(replicas->AllReduce(buffer, ReduceOp::kAvg));
    int64_t offset = 0;
    for (const auto& p : params) {
      p.mutable_grad().copy_(buffer.narrow(0, offset, p.numel()).view_as(p));
      offset += p.numel();
    }
  }
  m.profile.allreduce += Seconds(phase_start);

  phase_start = Clock::now();
  // One fused pass per parameter: decoder gradient projection, Adam, decoder renormalisation.
  // The gradient norm is of the projected gradient over the whole model: the shards' latent
  // rows plus b_pre once. With clipping it must be known before the update (an extra read of
  // the gradients and of the host); without, the fused pass reports it on the device.
  const std::vector<bool> unit_norm_rows = model_->params().UnitNormRows();  // W_dec
  const int64_t num_params = static_cast<int64_t>(unit_norm_rows.size());
  const double clip = config_.optimizer.grad_clip_norm;
  const double lr = ScheduledLearningRate(config_.optimizer, base_lr_, step_, total_steps_);
  auto global_norm = [&](const torch::Tensor& host_parts) -> absl::StatusOr<double> {
    const double* part = host_parts.data_ptr<double>();
    double latent_sq = 0;
    for (int64_t i = 0; i < num_params; ++i) {
      if (SaeParameters::IsPerLatent(i)) latent_sq += part[i];
    }
    SAEGRID_RETURN_IF_ERROR(AllReduceScalars(shards, ReduceOp::kSum, {&latent_sq}));
    return std::sqrt(latent_sq + part[3]);
  };
  double grad_norm = 0;
  torch::Tensor norm_parts;  // the parameters' squared norms, on the device
  if (clip > 0) {
    auto norm = global_norm(ToHost(torch::stack(adam_->FusedGradientSquaredNorms(unit_norm_rows))));
    if (!norm.ok()) return norm.status();
    grad_norm = *norm;
    adam_->FusedStep(lr, ClippingScale(grad_norm, clip), unit_norm_rows);
  } else {
    norm_parts = torch::stack(adam_->FusedStep(lr, 1.0, unit_norm_rows));
  }
  if (ema_) ema_->Update(params);
  // A latent that fired on any replica has fired.
  torch::Tensor fired = dead_->FiredMask(out->indices, out->acts);
  SAEGRID_RETURN_IF_ERROR(replicas->AllReduce(fired, ReduceOp::kMax));
  dead_->UpdateFired(fired, global_tokens);
  m.profile.optimizer += Seconds(phase_start);

  // BatchTopK's inference threshold follows the smallest activation any rank kept.
  const auto stat = out->sums.options();
  torch::Tensor min_kept = torch::full({1}, std::numeric_limits<double>::infinity(), stat);
  if (out->min_kept_activation.defined()) {
    min_kept = out->min_kept_activation.to(stat).view({1});
    SAEGRID_RETURN_IF_ERROR(gang_->world->AllReduce(min_kept, ReduceOp::kMin));
  }
  // The step's one read: [loss finite, dead after the step, possibly truncated and truncated
  // tokens, smallest kept activation] (+ the figures).
  std::vector<torch::Tensor> packed = {torch::isfinite(out->loss.detach()).to(stat).view({1}),
                                       dead_->DeadMask(mc.dead_tokens_threshold).sum().to(stat).view({1}),
                                       out->sums.narrow(0, ForwardSums::kPossiblyTruncated, 2), min_kept};
  constexpr int64_t kFixedReads = 5;
  if (figures) {
    packed.push_back(out->sums);
    if (norm_parts.defined()) packed.push_back(norm_parts.to(stat));
  }
  const torch::Tensor host = ToHost(torch::cat(packed));
  const double* read = host.data_ptr<double>();
  const bool finite = read[0] != 0;
  dead_count_ = static_cast<int64_t>(read[1]);
  const double overflow = read[2];
  const double truncated = read[3];
  if (activation.FitsInferenceThreshold()) {
    config_.model.inference_threshold = NextInferenceThreshold(
        config_.model.inference_threshold, read[4], mc.threshold_decay, config_.model.inference_threshold < 0);
    model_->set_inference_threshold(config_.model.inference_threshold);
  }
  // Every rank sees the same reduced loss, so every rank stops here together.
  if (!finite) {
    return absl::InternalError(absl::StrCat("training diverged at step ", step_ + 1,
                                            ": loss is not finite (try a lower optimizer.lr)"));
  }
  ++step_;
  tokens_ += global_tokens;
  overflow_tokens_ += static_cast<int64_t>(overflow);
  truncated_tokens_ += static_cast<int64_t>(truncated);
  m.step = step_;
  m.total_steps = total_steps_;
  m.tokens = tokens_;
  m.lr = lr;
  m.overflow_tokens = static_cast<int64_t>(overflow);
  m.overflow_tokens_total = overflow_tokens_;
  m.overflow_rate_total = static_cast<double>(overflow_tokens_) / std::max<int64_t>(tokens_, 1);
  m.truncated_tokens = static_cast<int64_t>(truncated);
  m.truncated_tokens_total = truncated_tokens_;
  m.truncated_rate_total = static_cast<double>(truncated_tokens_) / std::max<int64_t>(tokens_, 1);
  m.k = parallel_.k;
  m.inference_threshold = config_.model.inference_threshold;
  if (figures) {
    out->host_sums = ForwardSums::FromHost(host.narrow(0, kFixedReads, ForwardSums::kCount).clone());
    MetricsFromHostSums(*out, mc.d_in);
    if (norm_parts.defined()) {
      auto norm = global_norm(host.narrow(0, kFixedReads + ForwardSums::kCount, num_params).clone());
      if (!norm.ok()) return norm.status();
      grad_norm = *norm;
    }
    double dead_after = static_cast<double>(*dead_count_);
    SAEGRID_RETURN_IF_ERROR(AllReduceScalars(shards, ReduceOp::kSum, {&dead_after}));
    m.loss = out->fvu + out->prefix_fvu + (auxk ? mc.auxk_alpha * out->auxk_loss : 0) +
             activation.PenaltyValue(out->l1_loss, out->l0);
    m.fvu = out->fvu;
    m.mse = RawMse(out->mse, mc);
    m.auxk_loss = out->auxk_loss;
    m.l1_loss = out->l1_loss;
    m.l0 = out->l0;
    // Reported after this step's firing, as the evaluation counts them (AuxK used the count
    // from before the step).
    m.num_dead = static_cast<int64_t>(dead_after);
    m.dead_fraction = dead_after / mc.num_latents;
    m.overflow_rate = out->overflow_rate;
    m.truncated_rate = out->truncated_rate;
    m.grad_norm = grad_norm;
  }
  m.step_seconds = Seconds(start);
  m.tokens_per_second = global_tokens / std::max(m.step_seconds, 1e-9);
  parallel_.profile = nullptr;
  return m;
}

int64_t Trainer::bytes_sent() const {
  return gang_->world->bytes_sent() + gang_->shard_group->bytes_sent() + gang_->replica_group->bytes_sent();
}

// The published weights of the whole model, merged from the shards of replica 0 (the other
// replicas hold the same weights). Only replica 0's ranks call it; they all get the merge.
absl::StatusOr<SaeParameters> Trainer::GatherPublishedWeights() {
  SaeParameters local = PublishedWeights();
  Communicator* shards = gang_->shard_group.get();
  if (shards->size() == 1) return local;
  std::vector<torch::Tensor> merged = local.All();
  for (size_t i = 0; i < merged.size(); ++i) {
    if (!SaeParameters::IsPerLatent(i)) continue;  // b_pre is whole everywhere
    auto gathered = shards->AllGather(merged[i].contiguous());
    if (!gathered.ok()) return gathered.status();
    merged[i] = gathered->flatten(0, 1);  // [S, n/S, ...] -> [n, ...] in shard order
  }
  return SaeParameters::FromList(merged);
}

SaeParameters Trainer::PublishedWeights() const {
  if (!ema_) return model_->params().Clone();
  return SaeParameters::FromList(ema_->Averaged());
}

absl::StatusOr<EvalResult> Trainer::Evaluate(bool run_suite) {
  std::optional<SaeParameters> weights;
  auto result = EvaluateReconstruction(&weights);
  if (!result.ok()) return result;
  if (run_suite && !config_.evaluation.run.empty()) {
    SAEGRID_RETURN_IF_ERROR(RunSuiteWhilePeersWait(weights ? &*weights : nullptr, &*result));
  }
  return result;
}

// Rank 0 runs the evaluations on a thread of its own while every rank, itself included, joins an
// all-reduce each second until they are done: however long they take, no collective waits longer
// than that (a peer blocked in the checkpoint's first collective would time out).
absl::Status Trainer::RunSuiteWhilePeersWait(const SaeParameters* weights, EvalResult* result) {
  std::future<SuiteReport> pending;
  // A stop request arrived: its grace period is running, so the evaluations are skipped.
  const bool run = is_leader() && weights != nullptr && !stop_requested_.load();
  if (run) {
    pending = std::async(std::launch::async, [this, weights] {
      SuiteInputs inputs;
      inputs.config = &config_;
      inputs.model = config_.model;
      inputs.params = weights;
      inputs.device = device_;
      inputs.eval_rows = *eval_inputs_;
      inputs.eval_rows_split = eval_split_;
      absl::StatusOr<SuiteReport> report = absl::InternalError("not run");
      try {
        report = RunEvaluationSuite(inputs, config_.evaluation.run);
      } catch (const std::exception& e) {
        report = StatusFromException(e);
      }
      if (report.ok()) return *std::move(report);
      SuiteReport failed;
      failed.error = std::string(report.status().message());
      return failed;
    });
  }
  for (;;) {
    double done = !run || pending.wait_for(std::chrono::seconds(1)) == std::future_status::ready ? 1 : 0;
    SAEGRID_RETURN_IF_ERROR(AllReduceScalars(gang_->world.get(), ReduceOp::kMin, {&done}));
    if (done > 0) break;
  }
  if (run) result->evaluations = std::make_shared<const SuiteReport>(pending.get());
  return absl::OkStatus();
}

absl::StatusOr<EvalResult> Trainer::EvaluateReconstruction(std::optional<SaeParameters>* leader_weights) {
  // Collective parts first (every rank): the dead count over the shards, the merged weights
  // over replica 0's shards.
  double dead = static_cast<double>(dead_->CountDead(config_.model.dead_tokens_threshold));
  SAEGRID_RETURN_IF_ERROR(AllReduceScalars(gang_->shard_group.get(), ReduceOp::kSum, {&dead}));
  if (gang_->layout.replica() != 0) return EvalResult{};
  auto weights = GatherPublishedWeights();
  if (!weights.ok()) return weights.status();
  if (!is_leader()) return EvalResult{};
  if (!eval_inputs_) {
    auto split = source_->EvalSplit(config_.data.eval_max_tokens);
    if (!split.ok()) return split.status();
    eval_inputs_ = split->x.to(device_);
    if (eval_inputs_->size(0) == 0) {
      // No held-out blocks: evaluate in-sample rather than report figures of zero tokens.
      auto sample = source_->LocalSample(config_.data.eval_max_tokens);  // the leader alone
      if (!sample.ok()) return sample.status();
      eval_inputs_ = sample->to(device_);
      eval_split_ = "training_sample";
    }
  }
  const SaeModel full = SaeModel::ForInference(config_.model);
  EvalResult result = saegrid::Evaluate(full, *weights, *eval_inputs_, ground_truth_,
                                       dead / config_.model.num_latents, config_.evaluation.recovery_cosine);
  result.split = eval_split_;
  result.mse = RawMse(result.mse, config_.model);
  const auto& layout = gang_->layout;
  result.shards = layout.shards;
  result.candidates_per_shard = candidates_per_shard_;
  result.training_overflow_tokens = overflow_tokens_;
  result.training_overflow_rate = static_cast<double>(overflow_tokens_) / std::max<int64_t>(tokens_, 1);
  result.training_truncated_tokens = truncated_tokens_;
  result.training_truncated_rate = static_cast<double>(truncated_tokens_) / std::max<int64_t>(tokens_, 1);
  if (layout.shards > 1 && config_.model.architecture == Architecture::kTopK) {
    const OverflowRates rates = ShardedOverflowRate(full.NormalizeInputs(*eval_inputs_), *weights, layout.shards,
                                                    candidates_per_shard_, config_.model.k);
    result.eval_overflow_rate = rates.possibly_truncated;
    result.eval_truncated_rate = rates.truncated;
  }
  *leader_weights = *std::move(weights);
  return result;
}

// Every shard's state tensors are equal in shape, so one all-gather per tensor over replica 0's
// shard group brings them to rank 0, which writes every slice file. Costs rank 0 the memory of
// the whole state for the duration of the checkpoint.
absl::Status Trainer::GatherStateSlicesToLeader(const SaeParameters& raw, const TrainerState& state) {
  const auto& layout = gang_->layout;
  Communicator* shards = gang_->shard_group.get();
  auto gather = [&](const torch::Tensor& t, std::vector<torch::Tensor>* per_shard) -> absl::Status {
    auto all = shards->AllGather(t.contiguous());
    if (!all.ok()) return all.status();
    per_shard->clear();
    for (int64_t i = 0; i < layout.shards; ++i) per_shard->push_back((*all)[i].clone());
    return absl::OkStatus();
  };
  std::vector<TrainerState> states(layout.shards, state);
  std::vector<torch::Tensor> parts;
  const auto raw_all = raw.All();
  std::vector<std::vector<torch::Tensor>> param_lists(layout.shards, std::vector<torch::Tensor>(raw_all.size()));
  for (size_t p = 0; p < raw_all.size(); ++p) {
    SAEGRID_RETURN_IF_ERROR(gather(raw_all[p], &parts));
    for (int64_t i = 0; i < layout.shards; ++i) param_lists[i][p] = parts[i];
  }
  std::vector<SaeParameters> params;
  for (const auto& list : param_lists) params.push_back(SaeParameters::FromList(list));
  auto gather_list = [&](const std::vector<torch::Tensor>& list,
                         std::vector<torch::Tensor> TrainerState::*member) -> absl::Status {
    for (size_t p = 0; p < list.size(); ++p) {
      SAEGRID_RETURN_IF_ERROR(gather(list[p], &parts));
      for (int64_t i = 0; i < layout.shards; ++i) (states[i].*member)[p] = parts[i];
    }
    return absl::OkStatus();
  };
  SAEGRID_RETURN_IF_ERROR(gather_list(state.adam_exp_avg, &TrainerState::adam_exp_avg));
  SAEGRID_RETURN_IF_ERROR(gather_list(state.adam_exp_avg_sq, &TrainerState::adam_exp_avg_sq));
  SAEGRID_RETURN_IF_ERROR(gather_list(state.ema_shadow, &TrainerState::ema_shadow));
  SAEGRID_RETURN_IF_ERROR(gather(state.tokens_since_fired, &parts));
  for (int64_t i = 0; i < layout.shards; ++i) states[i].tokens_since_fired = parts[i];
  if (!is_leader()) return absl::OkStatus();
  const int64_t per = config_.model.num_latents / layout.shards;
  for (int64_t i = 0; i < layout.shards; ++i) {
    if (i > 0) states[i].rng_state = torch::Tensor();  // as in the shared-directory layout
    states[i].latent_begin = i * per;
    states[i].latent_end = (i + 1) * per;
    SAEGRID_RETURN_IF_ERROR(WriteStateSlice(CheckpointTempDir(config_.checkpoint.output_dir, step_),
                                            StateSliceFileName(i, layout.shards), params[i], states[i]));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Trainer::WriteCheckpointNow(const EvalResult* evaluation) {
  const auto& layout = gang_->layout;
  const std::string& output_dir = config_.checkpoint.output_dir;
  Communicator* world = gang_->world.get();
  // Rank 0 opens the temporary directory, replica 0's shards write their slices of the state
  // (the replicas hold the same state), rank 0 merges the published weights and finishes.
  if (is_leader()) SAEGRID_RETURN_IF_ERROR(BeginCheckpoint(output_dir, step_));
  SAEGRID_RETURN_IF_ERROR(world->Barrier());
  CheckpointContents c;
  c.model = config_.model;
  c.hookpoint = config_.checkpoint.hookpoint;
  c.export_saelens = config_.checkpoint.export_saelens;
  DescribeDataSource(config_.data, &c);
  c.published_is_ema = ema_ != nullptr;
  c.evaluation = evaluation;
  c.shards = layout.shards;
  c.replicas = layout.replicas;
  auto& s = c.state;
  s.latent_begin = model_->latent_begin();
  s.latent_end = model_->latent_begin() + model_->latent_count();
  s.step = step_;
  s.tokens = tokens_;
  s.overflow_tokens = overflow_tokens_;
  s.truncated_tokens = truncated_tokens_;
  s.cursor = source_->cursor();
  s.adam_exp_avg = adam_->exp_avg();
  s.adam_exp_avg_sq = adam_->exp_avg_sq();
  s.adam_step = adam_->step();
  s.tokens_since_fired = dead_->tokens_since_fired();
  if (ema_) {
    s.ema_shadow = ema_->shadow();
    s.ema_updates = ema_->updates();
  }
  if (is_leader()) s.rng_state = at::detail::getDefaultCPUGenerator().get_state();
  absl::Status written = absl::OkStatus();
  if (layout.replica() == 0 && config_.checkpoint.gather_to_leader && layout.shards > 1) {
    written = GatherStateSlicesToLeader(model_->params().Clone(), s);
    if (!written.ok() && !is_leader()) return written;  // a failed collective: the gang is gone
  } else if (layout.replica() == 0) {
    written = WriteStateSlice(CheckpointTempDir(output_dir, step_),
                              StateSliceFileName(layout.shard(), layout.shards),
                              model_->params().Clone(), s);
  }
  if (layout.replica() == 0) {
    auto merged = GatherPublishedWeights();
    if (!merged.ok()) return merged.status();
    c.published = *merged;
  }
  // Everyone learns whether every slice was written before the leader finishes.
  double failures = written.ok() ? 0 : 1;
  SAEGRID_RETURN_IF_ERROR(AllReduceScalars(world, ReduceOp::kSum, {&failures}));
  if (!written.ok()) return written;
  if (failures > 0) return absl::InternalError("another rank failed to write its checkpoint slice");
  absl::StatusOr<std::string> dir = CheckpointTempDir(output_dir, step_);
  double finished = 1;
  if (is_leader()) {
    for (int64_t shard = 0; shard < layout.shards; ++shard) {
      const int64_t per = config_.model.num_latents / layout.shards;
      c.slices.push_back({StateSliceFileName(shard, layout.shards), shard * per, (shard + 1) * per});
    }
    dir = FinishCheckpoint(output_dir, c);
    if (dir.ok()) {
      auto st = PruneCheckpoints(output_dir, config_.checkpoint.keep_last);
      if (!st.ok()) dir = st;
    }
    finished = dir.ok() ? 1 : 0;
  }
  // Nobody goes on (or exits) before the checkpoint is complete.
  auto done = torch::full({1}, finished, torch::TensorOptions().dtype(torch::kDouble).device(world->device()));
  SAEGRID_RETURN_IF_ERROR(world->Broadcast(done, 0));
  if (!dir.ok()) return dir.status();
  if (done.to(torch::kCPU).item<double>() == 0) return absl::InternalError("rank 0 failed to finish the checkpoint");
  return absl::StrCat(output_dir, "/checkpoints/", absl::StrFormat("step_%09d", step_));
}

absl::StatusOr<EvalResult> Trainer::Train(TrainingObserver* observer) {
  if (observer) observer->OnStart(step_, total_steps_, resumed_);
  const int64_t every = config_.checkpoint.every_steps;
  // A stop request reaches ranks at different moments: agree on it (max) every step, and decide
  // everything that depends on it from the agreed value only. (Reading the local flag again later
  // in the step let one rank read the figures, which takes a collective, while its peer did not.)
  bool stopping = false;
  while (step_ < total_steps_) {
    double stop = stop_requested_.load() ? 1 : 0;
    SAEGRID_RETURN_IF_ERROR(AllReduceScalars(gang_->world.get(), ReduceOp::kMax, {&stop}));
    stopping = stop > 0;
    // The figures are read at the steps that report them: every log_every_steps, before each
    // checkpoint, at the end, and on the last step before an agreed stop.
    const int64_t next = step_ + 1;
    const int64_t log_every = std::max<int64_t>(config_.training.log_every_steps, 1);
    const bool figures = next % log_every == 0 || next == total_steps_ || (every > 0 && next % every == 0) ||
                         stopping;
    auto m = Step(figures);
    if (!m.ok()) return m.status();
    if (observer) observer->OnStep(*m);
    if (stopping) break;  // the final checkpoint below is this step's
    if (every > 0 && step_ % every == 0 && step_ < total_steps_) {
      // evaluation.at_checkpoints: the evaluations at each periodic checkpoint too (rank 0 runs
      // them while its peers wait at the checkpoint's first collective).
      std::optional<EvalResult> periodic;
      if (config_.evaluation.at_checkpoints && !config_.evaluation.run.empty()) {
        auto eval = Evaluate(/*run_suite=*/true);
        if (!eval.ok()) return eval.status();
        periodic = *std::move(eval);
      }
      auto dir = WriteCheckpointNow(periodic && is_leader() ? &*periodic : nullptr);
      if (!dir.ok()) return dir.status();
      if (observer) observer->OnCheckpoint(*dir, step_);
    }
  }
  // A stopped run checkpoints promptly (a grace period is running): no evaluation suite.
  auto eval = Evaluate(/*run_suite=*/!stopping);
  if (!eval.ok()) return eval.status();
  if (observer && is_leader()) observer->OnEvaluation(*eval);
  auto dir = WriteCheckpointNow(is_leader() ? &*eval : nullptr);
  if (!dir.ok()) return dir.status();
  if (observer) observer->OnCheckpoint(*dir, step_);
  return eval;
}

}  // namespace saegrid
