// The live progress of `saegrid train`: one rewritten line on a terminal (step, tokens/s, FVU, L0,
// dead %, ETA), one line per log interval otherwise.
#pragma once

#include <chrono>
#include <cstdio>

#include "engine/trainer.h"

namespace saegrid::cli {

class ProgressPrinter : public TrainingObserver {
 public:
  ProgressPrinter(FILE* out, int64_t log_every_steps, bool quiet);
  void OnStart(int64_t step, int64_t total_steps, bool resumed) override;
  void OnStep(const StepMetrics& m) override;
  void OnCheckpoint(const std::string& dir, int64_t step) override;

 private:
  void EndLine();
  FILE* out_;
  int64_t log_every_;
  bool quiet_;
  bool tty_;
  bool line_open_ = false;
  int64_t first_step_ = 0;
  int64_t tokens_at_start_ = -1;
  // Since the last line: the steps' time and the part of it spent waiting for data.
  double step_seconds_ = 0, data_seconds_ = 0;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace saegrid::cli
