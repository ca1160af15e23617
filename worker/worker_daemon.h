// The worker daemon: registers with the coordinator, keeps a heartbeat stream open, starts and
// stops RankRuns as the coordinator says, and re-registers (listing what still runs) whenever the
// stream breaks, e.g. across a coordinator restart. The session the coordinator hands out at
// registration goes with every heartbeat and with the next registration.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "saegrid/v1/worker_service.grpc.pb.h"
#include "worker/rank_run.h"

namespace saegrid::worker {

class WorkerDaemon {
 public:
  WorkerDaemon(WorkerSettings settings, v1::WorkerCapabilities capabilities,
               std::shared_ptr<grpc::Channel> channel);
  // Runs until Shutdown(); then lets running ranks write a final checkpoint within `grace`.
  void Run();
  void Shutdown(absl::Duration grace);

 private:
  absl::Status RegisterOnce();
  void HeartbeatUntilBroken();
  void Apply(const v1::WorkerCommands& commands);
  void StopAttempt(const std::string& attempt_id, bool final_checkpoint, absl::Duration grace);
  std::vector<v1::RunningAssignment> Running();
  void ReapFinished();
  bool Drained();
  void StopRunsIfShuttingDown();

  WorkerSettings settings_;
  v1::WorkerCapabilities capabilities_;
  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<v1::WorkerService::Stub> stub_;
  absl::Duration heartbeat_interval_ = absl::Seconds(1);
  // From the last RegisterWorkerResponse; sent with every heartbeat and the next registration.
  // Only the Run() thread touches it.
  std::string session_;
  absl::Notification shutdown_;
  absl::Duration shutdown_grace_ = absl::Seconds(30);
  absl::Time drain_deadline_ = absl::InfiniteFuture();
  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<RankRun>> runs_ ABSL_GUARDED_BY(mu_);  // by attempt id
};

}  // namespace saegrid::worker
