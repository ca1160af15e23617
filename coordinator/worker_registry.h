// The workers the coordinator knows: their capabilities, liveness, sessions, and which rank each
// one should run or stop. In memory; the coordinator persists registrations through the Store.
//
// A worker id belongs to one live connection at a time: registration hands out a session, every
// heartbeat must carry it, and while a worker's heartbeats arrive (or its stream is open) a
// registration under its id is accepted only with its session.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/store.h"
#include "saegrid/v1/worker_service.pb.h"

namespace saegrid::coordinator {

// One rank of one attempt, as assigned to a worker.
struct RankSlot {
  std::string job_id, attempt_id;
  int rank = 0;
  bool start_sent = false;  // the worker was told to start it, so it may run it from now on
};

enum class WorkerState { kConnected, kDisconnected, kLost };

struct WorkerRecord {
  std::string worker_id;
  v1::WorkerCapabilities capabilities;
  WorkerState state = WorkerState::kDisconnected;
  absl::Time last_seen = absl::InfinitePast();
  bool seen_since_start = false;  // registered or heartbeated since this coordinator started
  std::string session;            // "" until it registers with this coordinator
  std::optional<RankSlot> slot;   // the rank the coordinator wants it to run
  std::vector<RankSlot> draining; // ranks it may still run that must stop
  std::vector<std::string> running;  // attempt ids it reported last
  int64_t ports_handed_out = 0;

  bool Runs(const std::string& attempt_id) const;
  bool Idle() const { return !slot && draining.empty(); }
  std::string Describe() const;  // "id (host)"
};

// Plain names: 1..64 of [A-Za-z0-9._-] for ids, 1..253 of [A-Za-z0-9.:-] for hosts.
bool IsPlainWorkerId(const std::string& id);
bool IsPlainHost(const std::string& host);

class WorkerRegistry {
 public:
  explicit WorkerRegistry(absl::Duration heartbeat_timeout) : heartbeat_timeout_(heartbeat_timeout) {}

  // INVALID_ARGUMENT naming the field for an id, host, device, port range, core, memory or GPU
  // count that a real worker could not have.
  static absl::Status Validate(const v1::RegisterWorkerRequest& request);

  // A worker known from the store, disconnected until it registers again.
  void Restore(const StoredWorker& stored);
  // Registers (or re-registers) the worker with a fresh session. ALREADY_EXISTS when another live
  // connection holds the id. Does not reconcile running ranks (the coordinator does).
  absl::StatusOr<WorkerRecord*> Register(const v1::RegisterWorkerRequest& request, const std::string& new_session,
                                         absl::Time now);
  // The worker behind a heartbeat: FAILED_PRECONDITION when unknown, lost, or the session is not
  // its current one (it must register again). Marks it connected and seen, records what it runs.
  absl::StatusOr<WorkerRecord*> Heartbeat(const v1::WorkerHeartbeat& heartbeat, absl::Time now);
  // The heartbeat stream of `session` closed: the worker counts as disconnected (the heartbeat
  // deadline, not the stream, decides whether its ranks are lost).
  void StreamClosed(const std::string& worker_id, const std::string& session);

  WorkerRecord* Find(const std::string& worker_id);
  // Marks lost every worker whose last heartbeat is older than the timeout and that matters (it
  // holds a slot, or was connected), and returns them. Workers known only from the store get
  // `reconnect_until` instead of one heartbeat period after a coordinator restart.
  std::vector<WorkerRecord*> ExpireSilent(absl::Time now, absl::Time reconnect_until);
  // Clears every slot of `attempt_id`. A worker that runs the rank, or was told to start it, keeps
  // it as draining, so that its next heartbeat is answered with a stop.
  void ReleaseAttempt(const std::string& attempt_id);
  // Idle/busy/disconnected/lost counts, for metrics.
  std::map<std::string, int> CountByState() const;

  std::map<std::string, WorkerRecord>& workers() { return workers_; }
  const std::map<std::string, WorkerRecord>& workers() const { return workers_; }

 private:
  absl::Duration heartbeat_timeout_;
  std::map<std::string, WorkerRecord> workers_;
};

}  // namespace saegrid::coordinator
