// The coordinator's brain: jobs and their lifecycle, the worker registry, gang scheduling,
// failure handling and restarts. Every change is written to the Store before it becomes visible,
// so that a restarted coordinator continues where the old one stopped. The gRPC services
// (job_service.h, worker_service.h) are thin adapters over this class.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/store.h"
#include "saegrid/v1/job.pb.h"
#include "saegrid/v1/job_service.pb.h"
#include "saegrid/v1/worker_service.pb.h"

namespace saegrid::coordinator {

struct CoordinatorOptions {
  std::string data_dir;  // saegrid.db and checkpoints/ live here
  absl::Duration heartbeat_interval = absl::Seconds(1);
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  absl::Duration restart_backoff_initial = absl::Seconds(1);
  absl::Duration restart_backoff_max = absl::Seconds(60);
  // After a coordinator restart: how long a running gang's workers have to reconnect.
  absl::Duration reconnect_grace = absl::Seconds(20);
  absl::Duration default_cancel_grace = absl::Seconds(60);
};

class Coordinator {
 public:
  static absl::StatusOr<std::unique_ptr<Coordinator>> Open(const CoordinatorOptions& options);

  // Client API.
  absl::StatusOr<v1::SubmitJobResponse> SubmitJob(const v1::SubmitJobRequest& request);
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id);
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request);
  absl::StatusOr<v1::Job> CancelJob(const std::string& job_id, absl::Duration grace);
  absl::StatusOr<std::vector<v1::JobEvent>> ListEvents(const std::string& job_id, int64_t after_sequence);
  absl::StatusOr<std::vector<v1::CheckpointInfo>> ListCheckpoints(const std::string& job_id);
  // step 0: the newest good checkpoint. Returns the info and the archive's path.
  absl::StatusOr<std::pair<v1::CheckpointInfo, std::string>> FindCheckpoint(const std::string& job_id, int64_t step);
  absl::StatusOr<v1::Evaluation> GetEvaluation(const std::string& job_id);
  // Blocks until the job's revision exceeds `after_revision` or `timeout` passes; returns the job
  // and the events after `after_revision`.
  absl::StatusOr<std::pair<v1::Job, std::vector<v1::JobEvent>>> WaitForUpdate(const std::string& job_id,
                                                                             int64_t after_revision,
                                                                             absl::Duration timeout);

  // Worker API.
  absl::StatusOr<v1::RegisterWorkerResponse> RegisterWorker(const v1::RegisterWorkerRequest& request);
  absl::StatusOr<v1::WorkerCommands> Heartbeat(const v1::WorkerHeartbeat& heartbeat);
  void WorkerStreamClosed(const std::string& worker_id);
  absl::Status ReportProgress(const v1::ReportProgressRequest& request);
  // Checks that the upload belongs to a live attempt before any byte is stored.
  absl::Status CheckUpload(const v1::UploadCheckpointHeader& header);
  // `archive` has been received, fsynced and its sha256 checked; it is moved into the data dir.
  absl::StatusOr<v1::CheckpointInfo> AddCheckpoint(const v1::UploadCheckpointHeader& header,
                                                   const std::string& archive);
  absl::Status ReportResult(const v1::ReportResultRequest& request);

  // Scheduling, heartbeat deadlines, backoffs, cancel grace and job deadlines; the server calls
  // it every few hundred milliseconds.
  void Tick();

  // Exports to `metrics` from now on (not owned; null: none). Call before serving.
  void SetMetrics(CoordinatorMetrics* metrics) { metrics_ = metrics; }

  std::string temp_dir() const { return options_.data_dir + "/tmp"; }
  const CoordinatorOptions& options() const { return options_; }

 private:
  enum class WorkerState { kConnected, kDisconnected, kLost };
  struct RankSlot {
    std::string job_id, attempt_id;
    int rank = 0;
  };
  struct Worker {
    std::string worker_id;
    v1::WorkerCapabilities capabilities;
    WorkerState state = WorkerState::kDisconnected;
    absl::Time last_seen;
    bool seen_since_start = false;  // registered or heartbeated since this coordinator started
    std::optional<RankSlot> slot;        // the rank the coordinator wants it to run
    std::vector<RankSlot> draining;      // ranks it still runs that must stop
    std::vector<std::string> running;    // attempt ids it reported last
    int64_t ports_handed_out = 0;
  };
  // What only lives in memory about a job's current attempt.
  struct AttemptRuntime {
    std::vector<bool> rank_running;
    std::vector<bool> rank_done;
    bool graceful_stop = false;
    std::string stop_note;  // why a rank stopped on its own (e.g. its worker shuts down)
    absl::Time stop_deadline = absl::InfiniteFuture();
    absl::Time reconnect_deadline = absl::InfiniteFuture();
  };

  explicit Coordinator(const CoordinatorOptions& options, std::unique_ptr<Store> store)
      : options_(options), store_(std::move(store)) {}
  absl::Status Recover();

  // Persists `job` (with `events` appended to its history) and publishes it.
  absl::Status Commit(v1::Job job, std::vector<v1::JobEvent> events) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::JobEvent Event(const v1::Job& job, v1::JobState to, v1::FailureReason reason, const std::string& message);
  absl::Status Transition(v1::Job& job, v1::JobState to, v1::FailureReason reason, const std::string& message,
                          std::vector<v1::JobEvent>* events);
  absl::StatusOr<v1::Job*> FindJob(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Schedule() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status StartAttempt(v1::Job& job, const std::vector<Worker*>& gang) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the current attempt: stops its ranks, then restarts (RESTARTING) or fails the job.
  void TearDown(const std::string& job_id, v1::FailureReason reason, const std::string& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseRanks(const std::string& job_id, const std::string& attempt_id, bool drain)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Finish(const std::string& job_id, v1::JobState state, v1::FailureReason reason, const std::string& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const StoredCheckpoint* NewestGoodCheckpoint(const std::string& job_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string Describe(const Worker& worker) const;

  CoordinatorOptions options_;
  std::unique_ptr<Store> store_;
  absl::Mutex mu_;
  std::map<std::string, v1::Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> job_by_request_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<v1::JobEvent>> events_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Worker> workers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<StoredCheckpoint>> checkpoints_ ABSL_GUARDED_BY(mu_);  // by step
  std::map<std::string, v1::Evaluation> evaluations_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, AttemptRuntime> runtime_ ABSL_GUARDED_BY(mu_);  // by job id
  int64_t next_job_number_ ABSL_GUARDED_BY(mu_) = 1;
  absl::Time started_ = absl::Now();
  CoordinatorMetrics* metrics_ = nullptr;
};

}  // namespace saegrid::coordinator
