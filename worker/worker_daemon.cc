#include "worker/worker_daemon.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "rpc/security.h"

namespace saegrid::worker {

WorkerDaemon::WorkerDaemon(WorkerSettings settings, v1::WorkerCapabilities capabilities,
                           std::shared_ptr<grpc::Channel> channel)
    : settings_(std::move(settings)),
      capabilities_(std::move(capabilities)),
      channel_(std::move(channel)),
      stub_(v1::WorkerService::NewStub(channel_)) {}

std::vector<v1::RunningAssignment> WorkerDaemon::Running() {
  absl::MutexLock lock(&mu_);
  std::vector<v1::RunningAssignment> out;
  for (const auto& [id, run] : runs_) {
    v1::RunningAssignment r;
    r.set_job_id(run->assignment().job_id());
    r.set_attempt_id(id);
    r.set_rank(run->assignment().rank());
    out.push_back(r);
  }
  return out;
}

// A run is listed as running until its result has been delivered.
void WorkerDaemon::ReapFinished() {
  std::vector<std::unique_ptr<RankRun>> done;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = runs_.begin(); it != runs_.end();) {
      if (it->second->finished()) {
        done.push_back(std::move(it->second));
        it = runs_.erase(it);
      } else {
        ++it;
      }
    }
  }
  done.clear();  // joins their threads outside the lock
}

absl::Status WorkerDaemon::RegisterOnce() {
  v1::RegisterWorkerRequest request;
  request.set_worker_id(settings_.worker_id);
  request.set_session(session_);  // proves this is the same daemon coming back, not a second one
  *request.mutable_capabilities() = capabilities_;
  for (auto& r : Running()) *request.add_running() = r;
  grpc::ClientContext ctx;
  rpc::AttachToken(&ctx, settings_.token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::RegisterWorkerResponse response;
  grpc::Status status = stub_->RegisterWorker(&ctx, request, &response);
  if (!status.ok()) return rpc::FromGrpcStatus(status);
  session_ = response.session();
  if (response.heartbeat_interval_seconds() > 0) {
    heartbeat_interval_ = absl::Seconds(response.heartbeat_interval_seconds());
  }
  for (const auto& id : response.stop_attempt_ids()) StopAttempt(id, false, absl::ZeroDuration());
  return absl::OkStatus();
}

void WorkerDaemon::StopAttempt(const std::string& attempt_id, bool final_checkpoint, absl::Duration grace) {
  absl::MutexLock lock(&mu_);
  auto it = runs_.find(attempt_id);
  if (it != runs_.end()) it->second->RequestStop(final_checkpoint, grace);
}

void WorkerDaemon::Apply(const v1::WorkerCommands& commands) {
  for (const auto& stop : commands.stop()) {
    StopAttempt(stop.attempt_id(), stop.final_checkpoint(), absl::Seconds(stop.grace_seconds()));
  }
  for (const auto& assignment : commands.start()) {
    absl::MutexLock lock(&mu_);
    if (runs_.count(assignment.attempt_id())) continue;
    std::fprintf(stdout, "saegrid-worker[%s]: starting %s rank %d of %d\n", settings_.worker_id.c_str(),
                 assignment.attempt_id().c_str(), assignment.rank(), assignment.world_size());
    std::fflush(stdout);
    auto run = std::make_unique<RankRun>(settings_, stub_, assignment);
    run->Start();
    runs_[assignment.attempt_id()] = std::move(run);
  }
}

void WorkerDaemon::HeartbeatUntilBroken() {
  grpc::ClientContext ctx;
  rpc::AttachToken(&ctx, settings_.token);
  auto stream = stub_->Heartbeat(&ctx);
  while (!Drained()) {
    ReapFinished();
    StopRunsIfShuttingDown();
    v1::WorkerHeartbeat heartbeat;
    heartbeat.set_worker_id(settings_.worker_id);
    heartbeat.set_session(session_);
    for (auto& r : Running()) *heartbeat.add_running() = r;
    v1::WorkerCommands commands;
    if (!stream->Write(heartbeat) || !stream->Read(&commands)) break;
    if (!shutdown_.HasBeenNotified()) Apply(commands);
    if (!shutdown_.HasBeenNotified()) shutdown_.WaitForNotificationWithTimeout(heartbeat_interval_);
    else absl::SleepFor(std::min(heartbeat_interval_, absl::Milliseconds(200)));
  }
  ctx.TryCancel();
  grpc::Status status = stream->Finish();
  if (!Drained()) {
    std::fprintf(stderr, "saegrid-worker[%s]: heartbeat stream ended: %s\n", settings_.worker_id.c_str(),
                 status.ok() ? "closed" : status.error_message().c_str());
  }
}

bool WorkerDaemon::Drained() {
  if (!shutdown_.HasBeenNotified()) return false;
  ReapFinished();
  return Running().empty() || absl::Now() > drain_deadline_;
}

// On shutdown every rank checkpoints and stops; heartbeats go on meanwhile, so that the
// coordinator does not declare this worker lost before the final checkpoint is uploaded.
void WorkerDaemon::StopRunsIfShuttingDown() {
  if (!shutdown_.HasBeenNotified()) return;
  absl::MutexLock lock(&mu_);
  for (auto& [id, run] : runs_) {
    run->RequestStop(true, shutdown_grace_, absl::StrCat("worker ", settings_.worker_id, " is shutting down"));
  }
}

void WorkerDaemon::Run() {
  absl::Duration backoff = absl::Milliseconds(200);
  while (!Drained()) {
    ReapFinished();
    StopRunsIfShuttingDown();
    auto st = RegisterOnce();
    if (!st.ok()) {
      if (absl::IsUnauthenticated(st) || absl::IsInvalidArgument(st)) {
        std::fprintf(stderr, "saegrid-worker[%s]: registration refused: %s\n", settings_.worker_id.c_str(),
                     std::string(st.message()).c_str());
      }
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(2));
      continue;
    }
    std::fprintf(stdout, "saegrid-worker[%s]: registered (%s, %s)\n", settings_.worker_id.c_str(),
                 capabilities_.device_kind().c_str(), capabilities_.host().c_str());
    std::fflush(stdout);
    backoff = absl::Milliseconds(200);
    HeartbeatUntilBroken();
  }
  absl::MutexLock lock(&mu_);
  runs_.clear();  // kills what is left after the deadline
}

void WorkerDaemon::Shutdown(absl::Duration grace) {
  shutdown_grace_ = grace;
  // Time to checkpoint, then to upload and report.
  drain_deadline_ = absl::Now() + grace + absl::Seconds(30);
  shutdown_.Notify();
}

}  // namespace saegrid::worker
