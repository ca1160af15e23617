#include "cli/metrics_log.h"

#include "nlohmann/json.hpp"

namespace saegrid::cli {

MetricsLog::MetricsLog(const std::string& path) : file_(std::fopen(path.c_str(), "w")) {}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsLog::Write(const std::string& line) {
  if (file_ == nullptr) return;
  std::fputs(line.c_str(), file_);
  std::fputc('\n', file_);
  std::fflush(file_);
}

void MetricsLog::OnStep(const StepMetrics& m) {
  nlohmann::json j = {{"step", m.step},
                      {"total_steps", m.total_steps},
                      {"tokens", m.tokens},
                      {"loss", m.loss},
                      {"fvu", m.fvu},
                      {"mse", m.mse},
                      {"auxk_loss", m.auxk_loss},
                      {"l1_loss", m.l1_loss},
                      {"l0", m.l0},
                      {"num_dead", m.num_dead},
                      {"dead_fraction", m.dead_fraction},
                      {"overflow_tokens", m.overflow_tokens},
                      {"overflow_rate", m.overflow_rate},
                      {"overflow_tokens_total", m.overflow_tokens_total},
                      {"overflow_rate_total", m.overflow_rate_total},
                      {"lr", m.lr},
                      {"grad_norm", m.grad_norm},
                      {"step_seconds", m.step_seconds},
                      {"tokens_per_second", m.tokens_per_second},
                      {"profile",
                       {{"encoder", m.profile.encoder},
                        {"topk", m.profile.topk},
                        {"allgather", m.profile.allgather},
                        {"decode", m.profile.decode},
                        {"allreduce", m.profile.allreduce},
                        {"backward", m.profile.backward},
                        {"optimizer", m.profile.optimizer}}}};
  Write(j.dump());
  last_event_ = std::chrono::steady_clock::now();
}

// The checkpoint is written right after the step (or the evaluation) the previous line
// reported, so the time since then is its write time.
void MetricsLog::OnCheckpoint(const std::string& dir, int64_t step) {
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_event_).count();
  Write(nlohmann::json({{"checkpoint", dir}, {"step", step}, {"seconds", seconds}}).dump());
  last_event_ = std::chrono::steady_clock::now();
}

void MetricsLog::OnEvaluation(const EvalResult& result) {
  Write(nlohmann::json({{"evaluation", EvalResultToJson(result)}}).dump());
  last_event_ = std::chrono::steady_clock::now();
}

}  // namespace saegrid::cli
