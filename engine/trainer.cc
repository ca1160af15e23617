#include "engine/trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/checkpoint.h"
#include "engine/runtime.h"

namespace saegrid {
namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// A checkpoint can only continue a run of the same model shape.
absl::Status CheckCompatible(const ModelConfig& want, const ModelConfig& have, const std::string& dir) {
  auto mismatch = [&](const char* field, auto a, auto b) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot resume from ", dir, ": model.", field, " is ", a, " in the config but ", b,
        " in the checkpoint (use a new checkpoint.output_dir or set checkpoint.resume: false)"));
  };
  if (want.architecture != have.architecture) {
    return mismatch("architecture", want.architecture == Architecture::kTopK ? "topk" : "relu",
                    have.architecture == Architecture::kTopK ? "topk" : "relu");
  }
  if (want.d_in != have.d_in) return mismatch("d_in", want.d_in, have.d_in);
  if (want.num_latents != have.num_latents) return mismatch("num_latents", want.num_latents, have.num_latents);
  if (want.k != have.k) return mismatch("k", want.k, have.k);
  if (want.normalize_inputs != have.normalize_inputs) {
    return absl::FailedPreconditionError("cannot resume from " + dir +
                                         ": model.normalize_inputs differs from the checkpoint");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TrainConfig& config) {
  std::unique_ptr<Trainer> t(new Trainer());
  t->config_ = config;
  t->threads_ = ConfigureThreads(config.runtime.num_threads);
  auto source = OpenActivationSource(config.data);
  if (!source.ok()) return source.status();
  t->source_ = *std::move(source);
  const int64_t d = t->source_->d_in();
  if (config.model.d_in > 0 && config.model.d_in != d) {
    return absl::InvalidArgumentError(absl::StrCat("model.d_in is ", config.model.d_in,
                                                   " but the activations in data have width ", d));
  }
  const ModelConfig model = ResolveModelConfig(config.model, d);
  if (model.architecture == Architecture::kTopK && model.k > model.num_latents) {
    return absl::InvalidArgumentError(absl::StrCat("model.k (", model.k, ") exceeds the ",
                                                   model.num_latents, " latents"));
  }
  t->config_.model = model;
  t->model_ = std::make_unique<SaeModel>(model);
  t->base_lr_ = config.optimizer.lr > 0 ? config.optimizer.lr : DefaultLearningRate(model.num_latents);
  t->total_steps_ = (config.training.total_tokens + config.data.batch_size - 1) / config.data.batch_size;
  t->adam_ = std::make_unique<Adam>(t->model_->params().All(), config.optimizer);
  if (config.optimizer.ema_decay > 0) {
    t->ema_ = std::make_unique<WeightEma>(t->model_->params().All(), config.optimizer.ema_decay);
  }
  t->dead_ = std::make_unique<DeadLatentTracker>(model.num_latents);

  std::string latest;
  if (config.checkpoint.resume) {
    auto found = FindLatestCheckpoint(config.checkpoint.output_dir);
    if (!found.ok()) return found.status();
    latest = *found;
  }
  if (!latest.empty()) {
    auto st = t->Resume(latest);
    if (!st.ok()) return st;
  } else {
    auto sample = t->source_->Sample(model.geometric_median_samples);
    if (!sample.ok()) return sample.status();
    t->model_->Initialize(t->model_->NormalizeInputs(*sample), config.training.seed);
  }
  return t;
}

absl::Status Trainer::Resume(const std::string& step_dir) {
  auto loaded = LoadCheckpoint(step_dir);
  if (!loaded.ok()) return loaded.status();
  auto st = CheckCompatible(config_.model, loaded->model, step_dir);
  if (!st.ok()) return st;
  torch::NoGradGuard no_grad;
  auto params = model_->params().All();
  auto raw = loaded->raw.All();
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
  if (s.rng_state.defined()) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    gen.set_state(s.rng_state);
  }
  st = source_->Restore(s.cursor);
  if (!st.ok()) return st;
  step_ = s.step;
  tokens_ = s.tokens;
  resumed_ = true;
  resumed_from_ = step_dir;
  return absl::OkStatus();
}

absl::StatusOr<StepMetrics> Trainer::Step() {
  const auto start = std::chrono::steady_clock::now();
  auto batch = source_->NextBatch();
  if (!batch.ok()) return batch.status();
  const int64_t batch_tokens = batch->x.size(0);
  const auto& mc = config_.model;
  const torch::Tensor dead_mask =
      mc.architecture == Architecture::kTopK ? dead_->DeadMask(mc.dead_tokens_threshold) : torch::Tensor();

  for (auto& p : model_->params().All()) p.mutable_grad().reset();
  ForwardOutput out = model_->TrainingForward(model_->NormalizeInputs(batch->x), dead_mask, ComputePath::kSparse);
  if (!std::isfinite(out.fvu) || !std::isfinite(out.loss.item<double>())) {
    return absl::InternalError(absl::StrCat("training diverged at step ", step_ + 1,
                                            ": loss is not finite (try a lower optimizer.lr)"));
  }
  out.loss.backward();
  model_->ProjectDecoderGradient();
  const double grad_norm = ClipGradientNorm(model_->params().All(), config_.optimizer.grad_clip_norm);
  const double lr = ScheduledLearningRate(config_.optimizer, base_lr_, step_, total_steps_);
  adam_->Step(lr);
  model_->RenormalizeDecoder();
  if (ema_) ema_->Update(model_->params().All());
  dead_->Update(out.indices, out.acts, batch_tokens);
  ++step_;
  tokens_ += batch_tokens;

  StepMetrics m;
  m.step = step_;
  m.total_steps = total_steps_;
  m.tokens = tokens_;
  m.fvu = out.fvu;
  m.mse = out.mse;
  m.auxk_loss = out.auxk_loss;
  m.l1_loss = out.l1_loss;
  m.l0 = out.l0;
  m.num_dead = out.num_dead;
  m.dead_fraction = static_cast<double>(out.num_dead) / mc.num_latents;
  m.lr = lr;
  m.grad_norm = grad_norm;
  m.step_seconds = Seconds(start);
  m.tokens_per_second = batch_tokens / std::max(m.step_seconds, 1e-9);
  return m;
}

SaeParameters Trainer::PublishedWeights() const {
  if (!ema_) return model_->params().Clone();
  const auto avg = ema_->Averaged();
  return {avg[0], avg[1], avg[2], avg[3]};
}

absl::StatusOr<EvalResult> Trainer::Evaluate() {
  if (!eval_inputs_) {
    auto split = source_->EvalSplit(config_.data.eval_max_tokens);
    if (!split.ok()) return split.status();
    eval_inputs_ = split->x;
    if (eval_inputs_->size(0) == 0) {
      // No held-out blocks: evaluate in-sample rather than report figures of zero tokens.
      auto sample = source_->Sample(config_.data.eval_max_tokens);
      if (!sample.ok()) return sample.status();
      eval_inputs_ = *sample;
      eval_split_ = "training_sample";
    }
  }
  const double dead_fraction =
      static_cast<double>(dead_->CountDead(config_.model.dead_tokens_threshold)) /
      config_.model.num_latents;
  torch::Tensor truth = source_->ground_truth();
  EvalResult result = saegrid::Evaluate(*model_, PublishedWeights(), *eval_inputs_, truth,
                                       dead_fraction, config_.evaluation.recovery_cosine);
  result.split = eval_split_;
  return result;
}

absl::StatusOr<std::string> Trainer::WriteCheckpointNow(const EvalResult* evaluation) {
  CheckpointContents c;
  c.model = config_.model;
  c.hookpoint = config_.checkpoint.hookpoint;
  c.export_saelens = config_.checkpoint.export_saelens;
  c.dataset_path = config_.data.use_synthetic ? "synthetic" : config_.data.path;
  c.raw = model_->params().Clone();
  c.published = PublishedWeights();
  c.published_is_ema = ema_ != nullptr;
  c.evaluation = evaluation;
  auto& s = c.state;
  s.step = step_;
  s.tokens = tokens_;
  s.cursor = source_->cursor();
  s.adam_exp_avg = adam_->exp_avg();
  s.adam_exp_avg_sq = adam_->exp_avg_sq();
  s.adam_step = adam_->step();
  s.tokens_since_fired = dead_->tokens_since_fired();
  if (ema_) {
    s.ema_shadow = ema_->shadow();
    s.ema_updates = ema_->updates();
  }
  s.rng_state = at::detail::getDefaultCPUGenerator().get_state();
  auto dir = WriteCheckpoint(config_.checkpoint.output_dir, c);
  if (!dir.ok()) return dir.status();
  auto st = PruneCheckpoints(config_.checkpoint.output_dir, config_.checkpoint.keep_last);
  if (!st.ok()) return st;
  return dir;
}

absl::StatusOr<EvalResult> Trainer::Train(TrainingObserver* observer) {
  if (observer) observer->OnStart(step_, total_steps_, resumed_);
  const int64_t every = config_.checkpoint.every_steps;
  while (step_ < total_steps_ && !stop_requested_.load()) {
    auto m = Step();
    if (!m.ok()) return m.status();
    if (observer) observer->OnStep(*m);
    if (every > 0 && step_ % every == 0 && step_ < total_steps_) {
      auto dir = WriteCheckpointNow(nullptr);
      if (!dir.ok()) return dir.status();
      if (observer) observer->OnCheckpoint(*dir, step_);
    }
  }
  auto eval = Evaluate();
  if (!eval.ok()) return eval.status();
  if (observer) observer->OnEvaluation(*eval);
  auto dir = WriteCheckpointNow(&*eval);
  if (!dir.ok()) return dir.status();
  if (observer) observer->OnCheckpoint(*dir, step_);
  return eval;
}

}  // namespace saegrid
