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
                      {"tokens_per_second", m.tokens_per_second}};
  Write(j.dump());
}

void MetricsLog::OnCheckpoint(const std::string& dir, int64_t step) {
  Write(nlohmann::json({{"checkpoint", dir}, {"step", step}}).dump());
}

void MetricsLog::OnEvaluation(const EvalResult& result) {
  Write(nlohmann::json({{"evaluation", EvalResultToJson(result)}}).dump());
}

}  // namespace saegrid::cli
