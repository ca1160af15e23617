// A real saegrid service on loopback for tests: the coordinator and worker binaries as child
// processes with their own data directories and tokens, and stubs that speak to them.
#pragma once

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "saegrid/v1/job_service.grpc.pb.h"
#include "saegrid/v1/worker_service.grpc.pb.h"
#include "tests/process_support.h"

namespace saegrid::testing {

struct ClusterOptions {
  int workers = 2;
  double heartbeat_interval = 0.3;
  double heartbeat_timeout = 3;
  double restart_backoff = 0.5;
  double reconnect_grace = 15;
  int threads_per_rank = 1;
  bool tls = false;  // a self-signed certificate for 127.0.0.1; workers and stubs trust it
  int health_port = 0;  // > 0: the coordinator also serves the health service alone here
};

class ServiceCluster {
 public:
  explicit ServiceCluster(const ClusterOptions& options = {});
  ~ServiceCluster();  // stops every process it started

  // Starts (or restarts, on the same port and data directory) the coordinator.
  void StartCoordinator();
  void KillCoordinator(int signal = SIGKILL);
  void StartWorker(int index);  // worker-<index>
  void KillWorker(int index, int signal = SIGKILL);
  // Kills the training process of `rank` of `attempt_id` (a worker's child); false if none runs.
  bool KillRank(const std::string& attempt_id, int rank, int signal = SIGKILL);
  bool WorkerRunning(int index) const { return workers_.count(index) > 0 && workers_.at(index) > 0; }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // The /metrics ports (loopback) of the coordinator and of worker-<index>.
  int coordinator_metrics_port() const;
  int worker_metrics_port(int index) const;
  const std::string& client_token() const { return client_token_; }
  const std::string& worker_token() const { return worker_token_; }
  const TempDir& dir() const { return dir_; }
  v1::JobService::Stub& jobs() { return *jobs_; }
  std::unique_ptr<v1::WorkerService::Stub> WorkerStub();
  std::shared_ptr<grpc::Channel> channel() { return channel_; }
  // The flags that make the saegrid CLI talk to this cluster.
  std::vector<std::string> CliFlags() const;
  // A context carrying `token` (the client token unless given) with a 30 s deadline.
  std::unique_ptr<grpc::ClientContext> Context(const std::string& token = "\x01") const;

  // Polls GetJob until `done(job)` or `timeout_s`; returns the last job seen.
  template <typename Predicate>
  v1::Job WaitFor(const std::string& job_id, Predicate done, double timeout_s);
  v1::Job GetJob(const std::string& job_id);
  // The job's checkpoints and evaluation; a failed call fails the test.
  v1::ListCheckpointsResponse Checkpoints(const std::string& job_id);
  v1::Evaluation Evaluation(const std::string& job_id);
  // The worker running `rank` of the job's current attempt (index for KillWorker), or -1.
  int WorkerOfRank(const v1::Job& job, int rank) const;
  std::string Logs() const;  // coordinator and worker logs, for failure messages

 private:
  ClusterOptions options_;
  TempDir dir_;
  std::string client_token_ = "client-secret-token", worker_token_ = "worker-secret-token";
  int port_ = 0;
  pid_t coordinator_ = -1;
  std::map<int, pid_t> workers_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
};

template <typename Predicate>
v1::Job ServiceCluster::WaitFor(const std::string& job_id, Predicate done, double timeout_s) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  v1::Job job;
  while (std::chrono::steady_clock::now() < give_up) {
    job = GetJob(job_id);
    if (done(job)) return job;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return job;
}

// SUCCEEDED, FAILED or CANCELLED.
inline bool Terminal(const v1::Job& job) {
  return job.state() == v1::JOB_STATE_SUCCEEDED || job.state() == v1::JOB_STATE_FAILED ||
         job.state() == v1::JOB_STATE_CANCELLED;
}

// A small TopK job over synthetic data (YAML); `steps` steps of batch 256, a checkpoint every
// `every` steps.
std::string SmallJobSpec(int shards, int steps, int every, int d = 64, int latents = 512);

}  // namespace saegrid::testing
