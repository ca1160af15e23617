#include "cli/metrics_log.h"

#include <filesystem>

#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
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

v1::Evaluation ToEvaluation(const EvalResult& result, int64_t step) {
  v1::Evaluation e;
  e.set_step(step);
  e.set_fvu(result.fvu);
  e.set_mse(result.mse);
  e.set_l0(result.l0);
  e.set_dead_fraction(result.dead_fraction);
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
