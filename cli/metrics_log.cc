#include "cli/metrics_log.h"

#include <filesystem>

#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "engine/eval/suite.h"
#include "google/protobuf/util/json_util.h"

namespace saegrid::cli {
namespace {

// The RankFailure record and the exit status must agree on every number.
#define SAEGRID_SAME_EXIT_CODE(cpp, proto) \
  static_assert(static_cast<int>(TrainExitCode::cpp) == v1::proto, #cpp " differs from " #proto)
SAEGRID_SAME_EXIT_CODE(kOk, TRAIN_EXIT_OK);
SAEGRID_SAME_EXIT_CODE(kFailed, TRAIN_EXIT_FAILED);
SAEGRID_SAME_EXIT_CODE(kInvalidConfig, TRAIN_EXIT_INVALID_CONFIG);
SAEGRID_SAME_EXIT_CODE(kPeerLost, TRAIN_EXIT_PEER_LOST);
SAEGRID_SAME_EXIT_CODE(kRestoreFailed, TRAIN_EXIT_RESTORE_FAILED);
SAEGRID_SAME_EXIT_CODE(kOutOfMemory, TRAIN_EXIT_OUT_OF_MEMORY);
SAEGRID_SAME_EXIT_CODE(kStopped, TRAIN_EXIT_STOPPED);
#undef SAEGRID_SAME_EXIT_CODE

int64_t DirectoryBytes(const std::string& dir) {
  int64_t bytes = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec)) bytes += static_cast<int64_t>(e.file_size(ec));
  }
  return bytes;
}

}  // namespace

v1::TrainingStep ToTrainingStep(const StepMetrics& m) {
  v1::TrainingStep s;
  v1::TrainingProgress* p = s.mutable_progress();
  p->set_step(m.step);
  p->set_total_steps(m.total_steps);
  p->set_tokens(m.tokens);
  p->set_loss(m.loss);
  p->set_fvu(m.fvu);
  p->set_mse(m.mse);
  p->set_auxk_loss(m.auxk_loss);
  p->set_l0(m.l0);
  p->set_num_dead(m.num_dead);
  p->set_dead_fraction(m.dead_fraction);
  p->set_lr(m.lr);
  p->set_tokens_per_second(m.tokens_per_second);
  p->set_step_seconds(m.step_seconds);
  p->set_overflow_rate(m.overflow_rate);
  s.set_l1_loss(m.l1_loss);
  s.set_overflow_tokens(m.overflow_tokens);
  s.set_overflow_tokens_total(m.overflow_tokens_total);
  s.set_overflow_rate_total(m.overflow_rate_total);
  s.set_grad_norm(m.grad_norm);
  s.set_truncated_tokens(m.truncated_tokens);
  s.set_truncated_tokens_total(m.truncated_tokens_total);
  s.set_truncated_rate_total(m.truncated_rate_total);
  s.set_k(m.k);
  s.set_inference_threshold(m.inference_threshold);
  v1::StepProfile* profile = s.mutable_profile();
  profile->set_encoder(m.profile.encoder);
  profile->set_topk(m.profile.topk);
  profile->set_allgather(m.profile.allgather);
  profile->set_decode(m.profile.decode);
  profile->set_allreduce(m.profile.allreduce);
  profile->set_backward(m.profile.backward);
  profile->set_optimizer(m.profile.optimizer);
  profile->set_data(m.profile.data);
  return s;
}

// The figures of the evaluations that ran, as typed fields (each message present only then).
void SetSuiteResults(const SuiteReport& r, v1::Evaluation* e) {
  if (const auto& d = r.downstream_loss) {
    auto* m = e->mutable_downstream_loss();
    m->set_sequences(d->sequences);
    m->set_positions(d->positions);
    m->set_ce_clean(d->ce_clean);
    m->set_ce_sae(d->ce_sae);
    m->set_ce_zero_ablation(d->ce_zero_ablation);
    m->set_ce_mean_ablation(d->ce_mean_ablation);
    m->set_loss_recovered(d->loss_recovered);
    m->set_loss_recovered_mean_ablation(d->loss_recovered_mean_ablation);
    m->set_kl_sae(d->kl_sae);
    m->set_kl_zero_ablation(d->kl_zero_ablation);
  }
  if (const auto& a = r.ablation_sparsity) {
    auto* m = e->mutable_ablation_sparsity();
    m->set_horizon(a->horizon);
    m->set_latents(a->latents);
    m->set_samples(a->samples);
    m->set_mean(a->mean);
    m->set_median(a->median);
    m->set_baseline_samples(a->baseline_samples);
    m->set_baseline_mean(a->baseline_mean);
    m->set_baseline_median(a->baseline_median);
  }
  if (const auto& t = r.token_stats) {
    auto* m = e->mutable_token_stats();
    m->set_latents_fired(t->latents_fired);
    m->set_mean_entropy(t->mean_entropy);
    m->set_mean_effective_tokens(t->mean_effective_tokens);
    m->set_median_effective_tokens(t->median_effective_tokens);
  }
  if (const auto& n = r.n2g) {
    auto* m = e->mutable_n2g();
    m->set_latents(n->latents);
    m->set_precision(n->precision);
    m->set_recall(n->recall);
    m->set_f1(n->f1);
  }
  if (const auto& p = r.probes) {
    auto* m = e->mutable_probes();
    m->set_tasks(static_cast<int64_t>(p->tasks.size()));
    m->set_rows(p->rows);
    m->set_mean_latent_loss(p->mean_latent_loss);
    m->set_mean_channel_loss(p->mean_channel_loss);
    m->set_mean_prior_loss(p->mean_prior_loss);
  }
  if (const auto& s = r.shrinkage) {
    auto* m = e->mutable_shrinkage();
    m->set_tokens(s->tokens);
    m->set_mean_ratio(s->mean_ratio);
    m->set_fvu_before(s->fvu_before);
    m->set_fvu_after(s->fvu_after);
  }
  if (const auto& c = r.sae_comparison) {
    auto* m = e->mutable_sae_comparison();
    m->set_other_checkpoint(c->other_checkpoint);
    m->set_other_latents(c->other_latents);
    m->set_threshold(c->threshold);
    m->set_novel_fraction(c->novel_fraction);
    m->set_reconstruction_fraction(c->reconstruction_fraction);
    m->set_mean_max_cosine(c->mean_max_cosine);
  }
  if (const auto& t = r.top_examples) {
    auto* m = e->mutable_top_examples();
    m->set_latents(t->latents);
    m->set_examples_per_latent(t->examples_per_latent);
  }
}

v1::Evaluation ToEvaluation(const EvalResult& result, int64_t step) {
  v1::Evaluation e;
  e.set_step(step);
  e.set_fvu(result.fvu);
  e.set_mse(result.mse);
  e.set_l0(result.l0);
  e.set_dead_fraction(result.dead_fraction);
  if (result.evaluations) SetSuiteResults(*result.evaluations, &e);
  e.set_evaluation_json(EvalResultToJson(result).dump(2));
  return e;
}

MetricsLog::MetricsLog(const std::string& path) : file_(std::fopen(path.c_str(), "w")) {}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsLog::Write(const v1::RankEvent& event) {
  if (file_ == nullptr) return;
  std::string line;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;  // a zero is a figure too (auxk_loss before any dead latent)
  if (!google::protobuf::util::MessageToJsonString(event, &line, options).ok()) return;
  std::fputs(line.c_str(), file_);
  std::fputc('\n', file_);
  std::fflush(file_);
}

void MetricsLog::OnStep(const StepMetrics& m) {
  if (!m.has_figures) return;  // only the steps whose figures were read (Trainer::Train)
  v1::RankEvent event;
  *event.mutable_step() = ToTrainingStep(m);
  Write(event);
  last_event_ = std::chrono::steady_clock::now();
}

// The checkpoint is written right after the step (or the evaluation) the previous line
// reported, so the time since then is its write time.
void MetricsLog::OnCheckpoint(const std::string& dir, int64_t step) {
  v1::RankEvent event;
  v1::CheckpointWritten* c = event.mutable_checkpoint();
  c->set_step(step);
  c->set_tokens(trainer_ != nullptr ? trainer_->tokens() : 0);
  c->set_directory(dir);
  c->set_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - last_event_).count());
  c->set_bytes(DirectoryBytes(dir));
  Write(event);
  last_event_ = std::chrono::steady_clock::now();
}

void MetricsLog::OnEvaluation(const EvalResult& result) {
  v1::RankEvent event;
  *event.mutable_evaluation() = ToEvaluation(result, trainer_ != nullptr ? trainer_->step() : 0);
  Write(event);
  last_event_ = std::chrono::steady_clock::now();
}

void MetricsLog::WriteFailure(TrainExitCode code, const std::string& message) {
  v1::RankEvent event;
  v1::RankFailure* f = event.mutable_failure();
  f->set_exit_code(static_cast<v1::TrainExitCode>(ToInt(code)));
  f->set_message(std::string(absl::StripAsciiWhitespace(absl::StrReplaceAll(message, {{"\n", " "}, {"\r", " "}}))));
  Write(event);
}

}  // namespace saegrid::cli
