// `--metrics-jsonl FILE`: one saegrid.v1.RankEvent (proto/saegrid/v1/rank_event.proto) per line,
// in proto JSON: each training step (with this rank's time per phase), each checkpoint (with its
// write time, tokens and size), the final evaluation, and, when the rank fails, a RankFailure as
// its last line. The worker daemon reads it; so do scripts and tests that compare runs step by step.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "base/exit_code.h"
#include "engine/trainer.h"
#include "saegrid/v1/rank_event.pb.h"

namespace saegrid::cli {

// The typed records of the engine's figures.
v1::TrainingStep ToTrainingStep(const StepMetrics& m);
v1::Evaluation ToEvaluation(const EvalResult& result, int64_t step);

class MetricsLog : public TrainingObserver {
 public:
  // Truncates `path`; `ok()` says whether it could be opened.
  explicit MetricsLog(const std::string& path);
  ~MetricsLog() override;
  bool ok() const { return file_ != nullptr; }
  // The trainer whose tokens and step the checkpoint and evaluation records carry (the observer
  // calls do not pass them). Until set they are 0.
  void set_trainer(const Trainer* trainer) { trainer_ = trainer; }
  void OnStep(const StepMetrics& m) override;
  void OnCheckpoint(const std::string& dir, int64_t step) override;
  void OnEvaluation(const EvalResult& result) override;
  // The rank's last record before it exits with `code`; `message` is made one line.
  void WriteFailure(TrainExitCode code, const std::string& message);

 private:
  void Write(const v1::RankEvent& event);
  FILE* file_;
  const Trainer* trainer_ = nullptr;
  std::chrono::steady_clock::time_point last_event_ = std::chrono::steady_clock::now();
};

// Passes every event on to several observers.
class ObserverList : public TrainingObserver {
 public:
  void Add(TrainingObserver* o) { observers_.push_back(o); }
  void OnStart(int64_t step, int64_t total, bool resumed) override {
    for (auto* o : observers_) o->OnStart(step, total, resumed);
  }
  void OnStep(const StepMetrics& m) override {
    for (auto* o : observers_) o->OnStep(m);
  }
  void OnCheckpoint(const std::string& dir, int64_t step) override {
    for (auto* o : observers_) o->OnCheckpoint(dir, step);
  }
  void OnEvaluation(const EvalResult& r) override {
    for (auto* o : observers_) o->OnEvaluation(r);
  }

 private:
  std::vector<TrainingObserver*> observers_;
};

}  // namespace saegrid::cli
