// One assignment on this worker: fetches the checkpoint to resume from, runs `saegrid-train` for
// the rank as a child process (the job as proto JSON, --job-proto-json), follows the rank's
// --metrics-jsonl file (saegrid.v1.RankEvent lines) and (rank 0) reports progress, uploads every
// checkpoint and the final evaluation. The result is reported (with retries across coordinator
// restarts) before the run counts as finished. Every call for the rank carries the assignment's
// rank and rank_credential.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "metrics/training_metrics.h"
#include "saegrid/v1/rank_event.pb.h"
#include "saegrid/v1/worker_service.grpc.pb.h"
#include "worker/child_process.h"

namespace saegrid::worker {

struct WorkerSettings {
  std::string worker_id;
  std::string data_dir;      // per-attempt working directories
  std::string trainer;       // the saegrid-train binary
  std::string host;          // address peers reach this worker's ranks at
  std::string token;
  int threads = 0;           // per rank; 0: all cores
  metrics::TrainingMetrics* metrics = nullptr;  // null: no /metrics
};

class RankRun {
 public:
  RankRun(const WorkerSettings& settings, std::shared_ptr<v1::WorkerService::Stub> stub, v1::Assignment assignment);
  ~RankRun();

  void Start();
  // Cancel: let the rank checkpoint and stop within `grace`. Teardown: kill it now.
  void RequestStop(bool final_checkpoint, absl::Duration grace, const std::string& why = "");
  // True once the result has been reported (or could not be, for good).
  bool finished() const { return finished_.load(); }
  const v1::Assignment& assignment() const { return assignment_; }

 private:
  void Run();
  absl::Status FetchResumeCheckpoint(const std::string& checkpoints_dir);
  absl::Status UploadCheckpoint(const v1::CheckpointWritten& checkpoint);
  // Consumes the complete lines of the rank's metrics file from `*offset` on.
  void ReadMetrics(const std::string& path, int64_t* offset);
  // The outcome and message of a rank that ended with `exit`.
  void ReportExit(const ExitStatus& exit, const std::string& log_path);
  void Report(v1::RankOutcome outcome, int exit_code, const std::string& message);
  // Retries UNAVAILABLE (the coordinator restarting) for up to `patience`.
  template <typename Call>
  grpc::Status Retry(Call call, absl::Duration patience);

  WorkerSettings settings_;
  std::shared_ptr<v1::WorkerService::Stub> stub_;
  v1::Assignment assignment_;
  std::string dir_;
  std::thread thread_;
  std::atomic<bool> finished_{false};
  absl::Mutex mu_;
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool final_checkpoint_ ABSL_GUARDED_BY(mu_) = false;
  std::string stop_reason_ ABSL_GUARDED_BY(mu_);
  absl::Time kill_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  // The rank's view of the training, from its --metrics-jsonl file.
  v1::TrainingProgress progress_;
  std::optional<v1::Evaluation> evaluation_;
  std::optional<v1::RankFailure> failure_;
  std::vector<v1::CheckpointWritten> new_checkpoints_;  // rank 0: not uploaded yet
  std::unique_ptr<metrics::TrainingMetrics::Rank> series_;
};

}  // namespace saegrid::worker
