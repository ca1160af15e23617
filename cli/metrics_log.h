// `--metrics-jsonl FILE`: one JSON object per training step (with this rank's time per phase),
// one per checkpoint (with its write time) and one for the final evaluation, appended as lines,
// for the worker daemon, scripts and tests that compare runs step by step.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

#include "engine/trainer.h"

namespace saegrid::cli {

class MetricsLog : public TrainingObserver {
 public:
  // Truncates `path`; `ok()` says whether it could be opened.
  explicit MetricsLog(const std::string& path);
  ~MetricsLog() override;
  bool ok() const { return file_ != nullptr; }
  void OnStep(const StepMetrics& m) override;
  void OnCheckpoint(const std::string& dir, int64_t step) override;
  void OnEvaluation(const EvalResult& result) override;

 private:
  void Write(const std::string& line);
  FILE* file_;
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
