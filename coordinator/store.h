// The coordinator's durable state in SQLite (WAL, synchronous=FULL): jobs, attempts, events,
// workers, checkpoints and evaluations. Records are the saegrid.v1 messages, stored as
// serialized blobs next to the columns that queries and humans (sqlite3 CLI) need.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "saegrid/v1/job.pb.h"
#include "saegrid/v1/worker_service.pb.h"

struct sqlite3;

namespace saegrid::coordinator {

struct StoredWorker {
  std::string worker_id;
  v1::WorkerCapabilities capabilities;
  int64_t last_seen_unix_ms = 0;
};

struct StoredCheckpoint {
  v1::CheckpointInfo info;
  std::string path;  // the archive in the data directory
};

struct StoredState {
  std::vector<v1::Job> jobs;
  std::vector<v1::JobEvent> events;  // by sequence
  std::vector<StoredWorker> workers;
  std::vector<StoredCheckpoint> checkpoints;
  std::vector<v1::Evaluation> evaluations;
};

// Failure semantics: the first failed save is sticky. It and every later save return
// UNAVAILABLE naming the original error, without touching the database, so that nothing is
// acknowledged after a write that may be missing (a later success would hide the gap). health()
// reports it; a restart (which reloads what is on disk) clears it.
class Store {
 public:
  // `busy_timeout`: how long a save waits for a lock held by another connection.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path,
                                                     absl::Duration busy_timeout = absl::Seconds(5));
  ~Store();

  absl::StatusOr<StoredState> LoadAll();
  // One transaction: the job row, its attempts and the new events (sequence assigned here).
  absl::Status SaveJob(const v1::Job& job, std::vector<v1::JobEvent>* new_events);
  absl::Status SaveWorker(const StoredWorker& worker);
  absl::Status SaveCheckpoint(const StoredCheckpoint& checkpoint);
  absl::Status SaveEvaluation(const v1::Evaluation& evaluation);

  // OK, or the sticky failure.
  absl::Status health() const;

 private:
  explicit Store(sqlite3* db) : db_(db) {}
  absl::Status Exec(const std::string& sql);
  absl::Status Error(const std::string& what) const;
  // Runs one save unless a failure is sticky; records its failure.
  template <typename Save>
  absl::Status Guarded(Save save);
  absl::Status SaveJobLocked(const v1::Job& job, std::vector<v1::JobEvent>* new_events);
  absl::Status SaveWorkerLocked(const StoredWorker& worker);
  absl::Status SaveCheckpointLocked(const StoredCheckpoint& checkpoint);
  absl::Status SaveEvaluationLocked(const v1::Evaluation& evaluation);

  sqlite3* db_;
  mutable absl::Mutex mu_;  // serialises saves and guards failure_
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
};

}  // namespace saegrid::coordinator
