// The coordinator: takes client and worker calls and delegates to small collaborators, all
// guarded by one mutex:
//   job_lifecycle.h     the state machine and its events
//   worker_registry.h   workers, sessions, liveness, which rank each should run or stop
//   scheduler.h         gang placement (a pure function of pending jobs and workers)
//   checkpoint_catalog.h the checkpoints of each job
//   attempt_accounting.h tokens trained and recomputed across attempts
//   rank_credentials.h  the per-rank secrets that worker calls must carry
// Every change is written to the Store before it becomes visible, so that a restarted
// coordinator continues where the old one stopped. A failed durable write is sticky: from then on
// the coordinator acknowledges nothing new (UNAVAILABLE) and reports itself unhealthy, since
// what it holds in memory may no longer match the disk. The gRPC services (job_service.h,
// worker_service.h) are thin adapters over this class.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/checkpoint_catalog.h"
#include "coordinator/clock.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/rank_credentials.h"
#include "coordinator/store.h"
#include "coordinator/worker_registry.h"
#include "saegrid/v1/job.pb.h"
#include "saegrid/v1/job_service.pb.h"
#include "saegrid/v1/worker_service.pb.h"

namespace saegrid::coordinator {

struct CoordinatorOptions {
  std::string data_dir;  // saegrid.db, checkpoints/ and the credential key live here
  absl::Duration heartbeat_interval = absl::Seconds(1);
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  absl::Duration restart_backoff_initial = absl::Seconds(1);
  absl::Duration restart_backoff_max = absl::Seconds(60);
  // After a coordinator restart: how long a running gang's workers have to reconnect.
  absl::Duration reconnect_grace = absl::Seconds(20);
  absl::Duration default_cancel_grace = absl::Seconds(60);
  Clock* clock = nullptr;  // not owned; null: the real clock
  absl::Duration store_busy_timeout = absl::Seconds(5);  // a locked database fails a write after this
};

class Coordinator {
 public:
  // Opens (or creates) the data directory and recovers the state the store holds.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Open(const CoordinatorOptions& options);

  // OK, or the sticky store failure (UNAVAILABLE) after which nothing new is acknowledged.
  absl::Status health() const;

  // ---- Client API. Errors name the field or the job; echoed input is bounded.
  // Validates the spec (fields, memory), then records the job PENDING. The same request_id with
  // the same spec returns the existing job (created = false); with another spec, ALREADY_EXISTS.
  absl::StatusOr<v1::SubmitJobResponse> SubmitJob(const v1::SubmitJobRequest& request);
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id);
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request);
  // A job without a gang is CANCELLED at once; a running one is CANCELLING until its ranks have
  // written a final checkpoint or `grace` (0: the default) passed.
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

  // ---- Worker API. Calls made for a rank carry the rank's credential from its assignment:
  // PERMISSION_DENIED without it, or when the caller is not the worker the attempt assigned.
  // Registration validates the worker's names and capabilities and hands out a session;
  // ALREADY_EXISTS while another live connection holds the id.
  absl::StatusOr<v1::RegisterWorkerResponse> RegisterWorker(const v1::RegisterWorkerRequest& request);
  // Records what the worker runs and answers with ranks to start and stop. FAILED_PRECONDITION:
  // register again (unknown, lost, or a stale session).
  absl::StatusOr<v1::WorkerCommands> Heartbeat(const v1::WorkerHeartbeat& heartbeat);
  void WorkerStreamClosed(const std::string& worker_id, const std::string& session);
  // Rank 0's newest step. INVALID_ARGUMENT for figures that cannot be (negative counts, NaN,
  // tokens that do not match the step).
  absl::Status ReportProgress(const v1::ReportProgressRequest& request);
  // Checks the header (identity, step, size, digest) before any byte is stored.
  absl::Status CheckUpload(const v1::UploadCheckpointHeader& header);
  // `archive` has been received, fsynced and its sha256 checked. It is inspected (a checkpoint
  // of this job's shape, at the header's step and tokens) and moved into the data directory.
  absl::StatusOr<v1::CheckpointInfo> AddCheckpoint(const v1::UploadCheckpointHeader& header,
                                                   const std::string& archive);
  // The checkpoint a rank resumes from: only the rank's own attempt's resume step.
  absl::StatusOr<std::pair<v1::CheckpointInfo, std::string>> AuthorizeFetch(const v1::FetchCheckpointRequest& request);
  absl::Status ReportResult(const v1::ReportResultRequest& request);

  // Scheduling, heartbeat deadlines, backoffs, cancel grace and job deadlines; the server calls
  // it every few hundred milliseconds.
  void Tick();

  // Exports to `metrics` from now on (not owned; null: none). Call before serving.
  void SetMetrics(CoordinatorMetrics* metrics) { metrics_ = metrics; }

  std::string temp_dir() const { return options_.data_dir + "/tmp"; }
  const CoordinatorOptions& options() const { return options_; }

 private:
  // What only lives in memory about a job's current attempt.
  struct AttemptRuntime {
    std::vector<bool> rank_running;
    std::vector<bool> rank_done;
    bool graceful_stop = false;
    std::string stop_note;  // why a rank stopped on its own (e.g. its worker shuts down)
    absl::Time stop_deadline = absl::InfiniteFuture();
    absl::Time reconnect_deadline = absl::InfiniteFuture();
  };
  // What the coordinator checks reports against, derived once from the job's spec.
  struct JobShape {
    int64_t batch_size = 1;
    int64_t total_steps = 0;
    int64_t d_in = 0;         // 0: taken from the data
    int64_t num_latents = 0;  // 0: d_in * expansion factor
    int64_t k = 0;
    std::string architecture;
    std::string hookpoint;
    std::string device;
    int64_t gang_size = 1;
    int64_t memory_per_rank = 0;
  };

  Coordinator(const CoordinatorOptions& options, std::unique_ptr<Store> store,
              std::unique_ptr<RankCredentials> credentials);
  absl::Status Recover();
  absl::Time Now() const { return options_.clock->Now(); }

  // Persists `job` (with `events` appended to its history) and publishes it.
  absl::Status Commit(v1::Job job, std::vector<v1::JobEvent> events) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Logs a failed commit where no caller can be told (the store's failure is sticky anyway).
  void CommitOrLog(v1::Job job, std::vector<v1::JobEvent> events) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::Job*> FindJob(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The attempt `attempt_id` of the job, when `worker_id` runs its `rank` and `credential` is the
  // rank's; PERMISSION_DENIED (or NOT_FOUND for the job) otherwise.
  absl::StatusOr<const v1::Attempt*> VerifyRank(const v1::Job& job, const std::string& attempt_id, int rank,
                                                const std::string& worker_id, const std::string& credential)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // VerifyRank for the job's current, live attempt.
  absl::StatusOr<v1::Job*> VerifyLiveRank(const std::string& job_id, const std::string& attempt_id, int rank,
                                          const std::string& worker_id, const std::string& credential)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ValidateProgress(const JobShape& shape, const v1::Attempt& attempt,
                                const v1::TrainingProgress& progress) const;
  void Schedule() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status StartAttempt(v1::Job& job, const std::vector<WorkerRecord*>& gang) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the current attempt: stops its ranks, then restarts (RESTARTING) or fails the job.
  void TearDown(const std::string& job_id, v1::FailureReason reason, const std::string& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the job in a terminal state, stopping whatever ranks it still has.
  void Finish(const std::string& job_id, v1::JobState state, v1::FailureReason reason, const std::string& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FinishRank0(v1::Job& job, AttemptRuntime& rt, const v1::ReportResultRequest& r,
                           const std::string& where) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CommandsFor(WorkerRecord& w, v1::WorkerCommands* commands) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  CoordinatorOptions options_;
  RealClock real_clock_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<RankCredentials> credentials_;
  absl::Time started_;
  CoordinatorMetrics* metrics_ = nullptr;

  mutable absl::Mutex mu_;
  std::map<std::string, v1::Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, JobShape> shapes_ ABSL_GUARDED_BY(mu_);  // by job id
  std::map<std::string, std::string> job_by_request_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<v1::JobEvent>> events_ ABSL_GUARDED_BY(mu_);
  WorkerRegistry registry_ ABSL_GUARDED_BY(mu_);
  CheckpointCatalog catalog_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, v1::Evaluation> evaluations_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, AttemptRuntime> runtime_ ABSL_GUARDED_BY(mu_);  // by job id
  int64_t next_job_number_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace saegrid::coordinator
