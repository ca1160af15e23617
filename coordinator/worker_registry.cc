#include "coordinator/worker_registry.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/bounded_text.h"

namespace saegrid::coordinator {

bool WorkerRecord::Runs(const std::string& attempt_id) const {
  return std::find(running.begin(), running.end(), attempt_id) != running.end();
}

std::string WorkerRecord::Describe() const { return absl::StrCat(worker_id, " (", capabilities.host(), ")"); }

bool IsPlainWorkerId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(),
                     [](char c) { return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-'; });
}

bool IsPlainHost(const std::string& host) {
  if (host.empty() || host.size() > 253) return false;
  return std::all_of(host.begin(), host.end(),
                     [](char c) { return absl::ascii_isalnum(c) || c == '.' || c == ':' || c == '-'; });
}

absl::Status WorkerRegistry::Validate(const v1::RegisterWorkerRequest& request) {
  if (!IsPlainWorkerId(request.worker_id())) {
    return absl::InvalidArgumentError(absl::StrCat("worker_id: must be 1 to 64 of [A-Za-z0-9._-], got ",
                                                   Quote(request.worker_id())));
  }
  const auto& caps = request.capabilities();
  if (caps.device_kind() != "cpu" && caps.device_kind() != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("capabilities.device_kind: must be cpu or cuda, got ", Quote(caps.device_kind())));
  }
  if (!IsPlainHost(caps.host())) {
    return absl::InvalidArgumentError(
        absl::StrCat("capabilities.host: must be a host name or address ([A-Za-z0-9.:-]), got ", Quote(caps.host())));
  }
  if (caps.rendezvous_port_min() <= 0 || caps.rendezvous_port_max() < caps.rendezvous_port_min() ||
      caps.rendezvous_port_max() > 65535) {
    return absl::InvalidArgumentError("capabilities.rendezvous_port_min/max: need 0 < min <= max <= 65535");
  }
  if (caps.cpu_cores() < 0) return absl::InvalidArgumentError("capabilities.cpu_cores: must be >= 0");
  if (caps.memory_bytes() < 0) return absl::InvalidArgumentError("capabilities.memory_bytes: must be >= 0");
  if (caps.gpu_count() < 0) return absl::InvalidArgumentError("capabilities.gpu_count: must be >= 0");
  if (caps.version().size() > 64) return absl::InvalidArgumentError("capabilities.version: at most 64 characters");
  if (request.running_size() > 1024) return absl::InvalidArgumentError("running: at most 1024 assignments");
  return absl::OkStatus();
}

void WorkerRegistry::Restore(const StoredWorker& stored) {
  WorkerRecord& w = workers_[stored.worker_id];
  w.worker_id = stored.worker_id;
  w.capabilities = stored.capabilities;
  w.state = WorkerState::kDisconnected;
  w.last_seen = absl::FromUnixMillis(stored.last_seen_unix_ms);
}

absl::StatusOr<WorkerRecord*> WorkerRegistry::Register(const v1::RegisterWorkerRequest& request,
                                                       const std::string& new_session, absl::Time now) {
  auto it = workers_.find(request.worker_id());
  if (it != workers_.end()) {
    const WorkerRecord& existing = it->second;
    const bool alive = existing.state == WorkerState::kConnected && !existing.session.empty() &&
                       now - existing.last_seen <= heartbeat_timeout_;
    if (alive && request.session() != existing.session) {
      return absl::AlreadyExistsError(absl::StrFormat(
          "worker_id %s is held by a live connection (last heartbeat %.1f s ago); a second worker cannot take it",
          Quote(request.worker_id()), absl::ToDoubleSeconds(now - existing.last_seen)));
    }
  }
  WorkerRecord& w = workers_[request.worker_id()];
  w.worker_id = request.worker_id();
  w.capabilities = request.capabilities();
  w.state = WorkerState::kConnected;
  w.last_seen = now;
  w.seen_since_start = true;
  w.session = new_session;
  return &w;
}

absl::StatusOr<WorkerRecord*> WorkerRegistry::Heartbeat(const v1::WorkerHeartbeat& heartbeat, absl::Time now) {
  auto it = workers_.find(heartbeat.worker_id());
  if (it == workers_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", Quote(heartbeat.worker_id()), " is not registered"));
  }
  WorkerRecord& w = it->second;
  if (w.session.empty() || heartbeat.session() != w.session) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker ", Quote(w.worker_id), ": the heartbeat's session is not the current one; register again"));
  }
  if (w.state == WorkerState::kLost) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", Quote(w.worker_id), " was declared lost; register again"));
  }
  if (heartbeat.running_size() > 1024) return absl::InvalidArgumentError("running: at most 1024 assignments");
  w.state = WorkerState::kConnected;
  w.last_seen = now;
  w.seen_since_start = true;
  w.running.clear();
  for (const auto& r : heartbeat.running()) w.running.push_back(r.attempt_id());
  return &w;
}

void WorkerRegistry::StreamClosed(const std::string& worker_id, const std::string& session) {
  auto it = workers_.find(worker_id);
  if (it == workers_.end() || it->second.session != session) return;
  if (it->second.state == WorkerState::kConnected) it->second.state = WorkerState::kDisconnected;
}

WorkerRecord* WorkerRegistry::Find(const std::string& worker_id) {
  auto it = workers_.find(worker_id);
  return it == workers_.end() ? nullptr : &it->second;
}

std::vector<WorkerRecord*> WorkerRegistry::ExpireSilent(absl::Time now, absl::Time reconnect_until) {
  std::vector<WorkerRecord*> lost;
  for (auto& [id, w] : workers_) {
    if (w.state == WorkerState::kLost || now - w.last_seen <= heartbeat_timeout_) continue;
    if (!w.seen_since_start && now < reconnect_until) continue;
    if (w.state == WorkerState::kDisconnected && !w.slot) continue;  // nothing to lose
    w.state = WorkerState::kLost;
    w.draining.clear();
    w.session.clear();
    lost.push_back(&w);
  }
  return lost;
}

void WorkerRegistry::ReleaseAttempt(const std::string& attempt_id) {
  for (auto& [id, w] : workers_) {
    if (!w.slot || w.slot->attempt_id != attempt_id) continue;
    if (w.state != WorkerState::kLost && (w.slot->start_sent || w.Runs(attempt_id))) w.draining.push_back(*w.slot);
    w.slot.reset();
  }
}

std::map<std::string, int> WorkerRegistry::CountByState() const {
  std::map<std::string, int> counts = {{"idle", 0}, {"busy", 0}, {"disconnected", 0}, {"lost", 0}};
  for (const auto& [id, w] : workers_) {
    if (w.state == WorkerState::kLost) ++counts["lost"];
    else if (w.state == WorkerState::kDisconnected) ++counts["disconnected"];
    else if (!w.Idle()) ++counts["busy"];
    else ++counts["idle"];
  }
  return counts;
}

}  // namespace saegrid::coordinator
