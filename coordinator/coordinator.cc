#include "coordinator/coordinator.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "coordinator/durable_file.h"
#include "google/protobuf/util/message_differencer.h"
#include "google/protobuf/util/time_util.h"
#include "nlohmann/json.hpp"
#include "spec/scheduling_fields.h"
#include "spec/train_config.h"

namespace saegrid::coordinator {
namespace {

namespace fs = std::filesystem;
using google::protobuf::util::TimeUtil;

google::protobuf::Timestamp ToProto(absl::Time t) { return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t)); }
absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(t));
}

std::string StateName(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  return name.substr(std::string("JOB_STATE_").size());
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED || state == v1::JOB_STATE_CANCELLED;
}

bool HasLiveAttempt(v1::JobState state) {
  return state == v1::JOB_STATE_STARTING || state == v1::JOB_STATE_RUNNING || state == v1::JOB_STATE_CANCELLING;
}

std::string DeviceOf(const v1::JobSpec& spec) {
  return spec.parallelism().device().empty() ? "cpu" : spec.parallelism().device();
}

int64_t GangSize(const v1::JobSpec& spec) {
  return std::max<int64_t>(1, spec.parallelism().shards()) * std::max<int64_t>(1, spec.parallelism().replicas());
}

v1::RankOutcome OutcomeOf(const v1::ReportResultRequest& r) { return r.outcome(); }

}  // namespace

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Open(const CoordinatorOptions& options) {
  std::error_code ec;
  for (const std::string& dir : {options.data_dir, options.data_dir + "/tmp", options.data_dir + "/checkpoints"}) {
    fs::create_directories(dir, ec);
    if (ec) return absl::FailedPreconditionError(absl::StrCat("--data-dir: cannot create ", dir, ": ", ec.message()));
  }
  // Partial uploads of a previous run are garbage.
  for (const auto& entry : fs::directory_iterator(options.data_dir + "/tmp", ec)) fs::remove(entry.path(), ec);
  auto store = Store::Open(options.data_dir + "/saegrid.db");
  if (!store.ok()) return store.status();
  std::unique_ptr<Coordinator> c(new Coordinator(options, *std::move(store)));
  auto st = c->Recover();
  if (!st.ok()) return st;
  return c;
}

absl::Status Coordinator::Recover() {
  absl::MutexLock lock(&mu_);
  auto state = store_->LoadAll();
  if (!state.ok()) return state.status();
  const absl::Time now = absl::Now();
  for (auto& job : state->jobs) {
    int64_t number = 0;
    if (absl::SimpleAtoi(job.job_id().substr(job.job_id().rfind('-') + 1), &number)) {
      next_job_number_ = std::max(next_job_number_, number + 1);
    }
    job_by_request_[job.request_id()] = job.job_id();
    if (HasLiveAttempt(job.state()) && job.attempts_size() > 0) {
      // The gang may still be running: its workers get reconnect_grace to say so.
      const auto& attempt = job.attempts(job.attempts_size() - 1);
      AttemptRuntime rt;
      rt.rank_running.assign(attempt.worker_ids_size(), false);
      rt.rank_done.assign(attempt.worker_ids_size(), false);
      rt.reconnect_deadline = now + options_.reconnect_grace;
      rt.graceful_stop = job.state() == v1::JOB_STATE_CANCELLING;
      rt.stop_deadline = rt.graceful_stop ? now + options_.default_cancel_grace : absl::InfiniteFuture();
      runtime_[job.job_id()] = rt;
    }
    jobs_[job.job_id()] = std::move(job);
  }
  for (auto& event : state->events) events_[event.job_id()].push_back(std::move(event));
  for (auto& w : state->workers) {
    Worker worker;
    worker.worker_id = w.worker_id;
    worker.capabilities = w.capabilities;
    worker.state = WorkerState::kDisconnected;
    worker.last_seen = absl::FromUnixMillis(w.last_seen_unix_ms);
    workers_[w.worker_id] = std::move(worker);
  }
  // Give back to each worker the rank the store says it runs.
  for (const auto& [job_id, rt] : runtime_) {
    const auto& attempt = jobs_[job_id].attempts(jobs_[job_id].attempts_size() - 1);
    for (int r = 0; r < attempt.worker_ids_size(); ++r) {
      auto it = workers_.find(attempt.worker_ids(r));
      if (it != workers_.end()) it->second.slot = RankSlot{job_id, attempt.attempt_id(), r};
    }
  }
  for (auto& c : state->checkpoints) checkpoints_[c.info.job_id()].push_back(std::move(c));
  for (auto& e : state->evaluations) evaluations_[e.job_id()] = std::move(e);
  return absl::OkStatus();
}

v1::JobEvent Coordinator::Event(const v1::Job& job, v1::JobState to, v1::FailureReason reason,
                                const std::string& message) {
  v1::JobEvent e;
  e.set_job_id(job.job_id());
  *e.mutable_time() = ToProto(absl::Now());
  e.set_from_state(job.state());
  e.set_to_state(to);
  e.set_reason(reason);
  e.set_message(message);
  return e;
}

absl::Status Coordinator::Transition(v1::Job& job, v1::JobState to, v1::FailureReason reason,
                                     const std::string& message, std::vector<v1::JobEvent>* events) {
  events->push_back(Event(job, to, reason, message));
  job.set_state(to);
  job.set_message(message);
  // The reason describes the current state; the events keep the history of earlier ones.
  job.set_failure_reason(reason);
  if (to != v1::JOB_STATE_PENDING) job.clear_pending_reason();
  if (IsTerminal(to)) *job.mutable_end_time() = ToProto(absl::Now());
  return absl::OkStatus();
}

absl::Status Coordinator::Commit(v1::Job job, std::vector<v1::JobEvent> events) {
  int64_t revision = job.revision();
  for (auto& e : events) e.set_revision(++revision);
  if (events.empty()) ++revision;
  job.set_revision(revision);
  *job.mutable_update_time() = ToProto(absl::Now());
  auto st = store_->SaveJob(job, &events);
  if (!st.ok()) return st;
  auto& history = events_[job.job_id()];
  for (auto& e : events) history.push_back(std::move(e));
  jobs_[job.job_id()] = std::move(job);
  return absl::OkStatus();
}

absl::StatusOr<v1::Job*> Coordinator::FindJob(const std::string& job_id) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job '", job_id, "' not found"));
  return &it->second;
}

// ---- client API -------------------------------------------------------------------------------

absl::StatusOr<v1::SubmitJobResponse> Coordinator::SubmitJob(const v1::SubmitJobRequest& request) {
  if (request.request_id().empty() || request.request_id().size() > 128) {
    return absl::InvalidArgumentError("request_id: required, at most 128 characters");
  }
  if (auto st = ValidateSchedulingFields(request.spec()); !st.ok()) return st;
  auto config = ToTrainConfig(request.spec());
  if (!config.ok()) return config.status();
  absl::MutexLock lock(&mu_);
  if (auto it = job_by_request_.find(request.request_id()); it != job_by_request_.end()) {
    const v1::Job& existing = jobs_[it->second];
    if (!google::protobuf::util::MessageDifferencer::Equals(existing.spec(), request.spec())) {
      return absl::AlreadyExistsError(absl::StrCat("request_id '", request.request_id(), "' was used for job ",
                                                   existing.job_id(), " with a different spec"));
    }
    v1::SubmitJobResponse response;
    *response.mutable_job() = existing;
    response.set_created(false);
    return response;
  }
  v1::Job job;
  job.set_job_id(absl::StrFormat("job-%06d", next_job_number_));
  job.set_request_id(request.request_id());
  *job.mutable_spec() = request.spec();
  *job.mutable_create_time() = ToProto(absl::Now());
  job.set_state(v1::JOB_STATE_UNSPECIFIED);
  std::vector<v1::JobEvent> events;
  Transition(job, v1::JOB_STATE_PENDING, v1::FAILURE_REASON_UNSPECIFIED,
             absl::StrFormat("submitted: %d shards x %d replicas on %s, %d tokens", config->parallelism.shards,
                             config->parallelism.replicas, DeviceOf(request.spec()),
                             config->training.total_tokens),
             &events)
      .IgnoreError();
  job.mutable_progress()->set_total_tokens(config->training.total_tokens);
  if (auto st = Commit(job, std::move(events)); !st.ok()) return st;
  ++next_job_number_;
  job_by_request_[request.request_id()] = job.job_id();
  Schedule();
  v1::SubmitJobResponse response;
  *response.mutable_job() = jobs_[job.job_id()];
  response.set_created(true);
  return response;
}

absl::StatusOr<v1::Job> Coordinator::GetJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto job = FindJob(job_id);
  if (!job.ok()) return job.status();
  return **job;
}

absl::StatusOr<v1::ListJobsResponse> Coordinator::ListJobs(const v1::ListJobsRequest& request) {
  if (request.page_size() < 0 || request.page_size() > 500) {
    return absl::InvalidArgumentError(absl::StrCat("page_size: must be in [0, 500], got ", request.page_size()));
  }
  const int page_size = request.page_size() == 0 ? 50 : request.page_size();
  // The token is the id of the last job of the previous page; ids increase with submission.
  const std::string& after = request.page_token();
  if (!after.empty() && after.rfind("job-", 0) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("page_token: '", after, "' is not a token from ListJobs"));
  }
  absl::MutexLock lock(&mu_);
  v1::ListJobsResponse response;
  for (auto it = jobs_.rbegin(); it != jobs_.rend(); ++it) {
    const v1::Job& job = it->second;
    if (!after.empty() && job.job_id() >= after) continue;
    if (request.states_size() > 0 &&
        std::find(request.states().begin(), request.states().end(), job.state()) == request.states().end()) {
      continue;
    }
    bool labels_match = true;
    for (const auto& [k, v] : request.labels()) {
      auto l = job.spec().labels().find(k);
      if (l == job.spec().labels().end() || l->second != v) labels_match = false;
    }
    if (!labels_match) continue;
    if (response.jobs_size() == page_size) {
      response.set_next_page_token(response.jobs(page_size - 1).job_id());
      break;
    }
    *response.add_jobs() = job;
  }
  return response;
}

absl::StatusOr<v1::Job> Coordinator::CancelJob(const std::string& job_id, absl::Duration grace) {
  absl::MutexLock lock(&mu_);
  auto found = FindJob(job_id);
  if (!found.ok()) return found.status();
  v1::Job job = **found;
  if (IsTerminal(job.state())) {
    return absl::FailedPreconditionError(absl::StrCat("job ", job_id, " is already ", StateName(job.state())));
  }
  if (job.state() == v1::JOB_STATE_CANCELLING) return job;
  std::vector<v1::JobEvent> events;
  if (!HasLiveAttempt(job.state())) {
    Transition(job, v1::JOB_STATE_CANCELLED, v1::FAILURE_REASON_CANCELLED, "cancelled before it started",
               &events).IgnoreError();
  } else {
    if (grace <= absl::ZeroDuration()) grace = options_.default_cancel_grace;
    Transition(job, v1::JOB_STATE_CANCELLING, v1::FAILURE_REASON_UNSPECIFIED,
               absl::StrCat("cancelling: ranks write a final checkpoint within ", absl::FormatDuration(grace)),
               &events).IgnoreError();
    auto& rt = runtime_[job_id];
    rt.graceful_stop = true;
    rt.stop_deadline = absl::Now() + grace;
  }
  if (auto st = Commit(job, std::move(events)); !st.ok()) return st;
  return jobs_[job_id];
}

absl::StatusOr<std::vector<v1::JobEvent>> Coordinator::ListEvents(const std::string& job_id, int64_t after) {
  absl::MutexLock lock(&mu_);
  if (auto job = FindJob(job_id); !job.ok()) return job.status();
  std::vector<v1::JobEvent> out;
  for (const auto& e : events_[job_id]) {
    if (e.sequence() > after) out.push_back(e);
  }
  return out;
}

absl::StatusOr<std::vector<v1::CheckpointInfo>> Coordinator::ListCheckpoints(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  if (auto job = FindJob(job_id); !job.ok()) return job.status();
  std::vector<v1::CheckpointInfo> out;
  for (const auto& c : checkpoints_[job_id]) out.push_back(c.info);
  return out;
}

const StoredCheckpoint* Coordinator::NewestGoodCheckpoint(const std::string& job_id) const {
  auto it = checkpoints_.find(job_id);
  if (it == checkpoints_.end()) return nullptr;
  for (auto c = it->second.rbegin(); c != it->second.rend(); ++c) {
    if (!c->info.bad()) return &*c;
  }
  return nullptr;
}

absl::StatusOr<std::pair<v1::CheckpointInfo, std::string>> Coordinator::FindCheckpoint(const std::string& job_id,
                                                                                      int64_t step) {
  absl::MutexLock lock(&mu_);
  if (auto job = FindJob(job_id); !job.ok()) return job.status();
  if (step == 0) {
    const StoredCheckpoint* c = NewestGoodCheckpoint(job_id);
    if (c == nullptr) return absl::NotFoundError(absl::StrCat("job ", job_id, " has no checkpoint yet"));
    return std::make_pair(c->info, c->path);
  }
  for (const auto& c : checkpoints_[job_id]) {
    if (c.info.step() == step) return std::make_pair(c.info, c.path);
  }
  return absl::NotFoundError(absl::StrCat("job ", job_id, " has no checkpoint at step ", step));
}

absl::StatusOr<v1::Evaluation> Coordinator::GetEvaluation(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto job = FindJob(job_id);
  if (!job.ok()) return job.status();
  auto it = evaluations_.find(job_id);
  if (it == evaluations_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("job ", job_id, " has no evaluation yet (it is ",
                                                      StateName((*job)->state()), ")"));
  }
  return it->second;
}

absl::StatusOr<std::pair<v1::Job, std::vector<v1::JobEvent>>> Coordinator::WaitForUpdate(const std::string& job_id,
                                                                                        int64_t after_revision,
                                                                                        absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  if (auto job = FindJob(job_id); !job.ok()) return job.status();
  auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return jobs_[job_id].revision() > after_revision; };
  mu_.AwaitWithTimeout(absl::Condition(&changed), timeout);
  std::vector<v1::JobEvent> events;
  for (const auto& e : events_[job_id]) {
    if (e.revision() > after_revision) events.push_back(e);
  }
  return std::make_pair(jobs_[job_id], std::move(events));
}

// ---- worker API -------------------------------------------------------------------------------

std::string Coordinator::Describe(const Worker& w) const {
  return absl::StrCat(w.worker_id, " (", w.capabilities.host(), ")");
}

absl::StatusOr<v1::RegisterWorkerResponse> Coordinator::RegisterWorker(const v1::RegisterWorkerRequest& request) {
  if (request.worker_id().empty() || request.worker_id().size() > 128) {
    return absl::InvalidArgumentError("worker_id: required, at most 128 characters");
  }
  const auto& caps = request.capabilities();
  if (caps.device_kind() != "cpu" && caps.device_kind() != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("capabilities.device_kind: must be cpu or cuda, got '",
                                                   caps.device_kind(), "'"));
  }
  if (caps.host().empty()) return absl::InvalidArgumentError("capabilities.host: required");
  if (caps.rendezvous_port_min() <= 0 || caps.rendezvous_port_max() < caps.rendezvous_port_min() ||
      caps.rendezvous_port_max() > 65535) {
    return absl::InvalidArgumentError("capabilities.rendezvous_port_min/max: need 0 < min <= max <= 65535");
  }
  absl::MutexLock lock(&mu_);
  Worker& w = workers_[request.worker_id()];
  w.worker_id = request.worker_id();
  w.capabilities = caps;
  w.state = WorkerState::kConnected;
  w.last_seen = absl::Now();
  w.seen_since_start = true;
  StoredWorker stored{w.worker_id, caps, absl::ToUnixMillis(w.last_seen)};
  if (auto st = store_->SaveWorker(stored); !st.ok()) return st;
  v1::RegisterWorkerResponse response;
  response.set_heartbeat_interval_seconds(absl::ToDoubleSeconds(options_.heartbeat_interval));
  // Reconcile what it runs with what the store says it should run.
  w.draining.clear();
  for (const auto& r : request.running()) {
    const bool wanted = w.slot && w.slot->attempt_id == r.attempt_id() && w.slot->rank == r.rank();
    if (wanted) {
      auto rt = runtime_.find(w.slot->job_id);
      if (rt != runtime_.end() && r.rank() >= 0 && r.rank() < static_cast<int>(rt->second.rank_running.size())) {
        rt->second.rank_running[r.rank()] = true;
      }
    } else {
      w.draining.push_back(RankSlot{r.job_id(), r.attempt_id(), r.rank()});
      response.add_stop_attempt_ids(r.attempt_id());
    }
  }
  return response;
}

absl::StatusOr<v1::WorkerCommands> Coordinator::Heartbeat(const v1::WorkerHeartbeat& heartbeat) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(heartbeat.worker_id());
  if (it == workers_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("worker '", heartbeat.worker_id(), "' is not registered"));
  }
  Worker& w = it->second;
  if (w.state == WorkerState::kLost) {
    return absl::FailedPreconditionError(absl::StrCat("worker '", w.worker_id, "' was declared lost; register again"));
  }
  w.state = WorkerState::kConnected;
  w.last_seen = absl::Now();
  w.seen_since_start = true;
  w.running.clear();
  for (const auto& r : heartbeat.running()) w.running.push_back(r.attempt_id());
  auto runs = [&](const std::string& attempt_id) {
    return std::find(w.running.begin(), w.running.end(), attempt_id) != w.running.end();
  };
  v1::WorkerCommands commands;
  // Ranks to stop: torn-down gangs (now) and cancelled jobs (after a final checkpoint).
  std::vector<RankSlot> still_draining;
  for (const auto& d : w.draining) {
    if (!runs(d.attempt_id)) continue;
    still_draining.push_back(d);
    auto* stop = commands.add_stop();
    stop->set_attempt_id(d.attempt_id);
  }
  w.draining = std::move(still_draining);
  auto rt_it = w.slot ? runtime_.find(w.slot->job_id) : runtime_.end();
  if (w.slot && (rt_it == runtime_.end() || w.slot->rank >= static_cast<int>(rt_it->second.rank_running.size()))) {
    w.slot.reset();  // a slot without a live attempt behind it: nothing to run
  }
  if (w.slot) {
    v1::Job& job = jobs_[w.slot->job_id];
    auto& rt = rt_it->second;
    const auto& attempt = job.attempts(job.attempts_size() - 1);
    const int rank = w.slot->rank;
    if (runs(w.slot->attempt_id)) {
      if (!rt.rank_running[rank]) {
        rt.rank_running[rank] = true;
        if (job.state() == v1::JOB_STATE_STARTING &&
            std::all_of(rt.rank_running.begin(), rt.rank_running.end(), [](bool b) { return b; })) {
          v1::Job updated = job;
          std::vector<v1::JobEvent> events;
          Transition(updated, v1::JOB_STATE_RUNNING, v1::FAILURE_REASON_UNSPECIFIED,
                     absl::StrCat("attempt ", attempt.number(), ": all ", attempt.worker_ids_size(),
                                  " ranks running"),
                     &events).IgnoreError();
          if (!job.has_start_time()) *updated.mutable_start_time() = ToProto(absl::Now());
          Commit(updated, std::move(events)).IgnoreError();
        }
      }
      if (rt.graceful_stop && !rt.rank_done[rank]) {
        auto* stop = commands.add_stop();
        stop->set_attempt_id(w.slot->attempt_id);
        stop->set_final_checkpoint(true);
        stop->set_grace_seconds(std::max(0.0, absl::ToDoubleSeconds(rt.stop_deadline - absl::Now())));
      }
    } else if (rt.rank_running[rank] && !rt.rank_done[rank]) {
      // It ran the rank and no longer does, without a result: the worker restarted.
      TearDown(job.job_id(), v1::FAILURE_REASON_WORKER_LOST,
               absl::StrFormat("worker %s no longer runs rank %d", Describe(w), rank));
    } else if (!rt.rank_done[rank] && job.state() == v1::JOB_STATE_STARTING) {
      auto* a = commands.add_start();
      a->set_job_id(job.job_id());
      a->set_attempt_id(attempt.attempt_id());
      a->set_attempt_number(attempt.number());
      a->set_rank(rank);
      a->set_world_size(attempt.worker_ids_size());
      a->set_rendezvous(attempt.rendezvous());
      *a->mutable_spec() = job.spec();
      if (attempt.resumed_from_step() > 0) {
        for (const auto& c : checkpoints_[job.job_id()]) {
          if (c.info.step() == attempt.resumed_from_step()) *a->mutable_resume_from() = c.info;
        }
      }
    }
  }
  return commands;
}

void Coordinator::WorkerStreamClosed(const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  // The heartbeat deadline decides whether it is lost: a network blip must not kill a gang.
  if (it != workers_.end() && it->second.state == WorkerState::kConnected) it->second.state = WorkerState::kDisconnected;
}

absl::Status Coordinator::ReportProgress(const v1::ReportProgressRequest& request) {
  absl::MutexLock lock(&mu_);
  auto found = FindJob(request.job_id());
  if (!found.ok()) return found.status();
  v1::Job job = **found;
  if (job.attempts_size() == 0 || job.attempts(job.attempts_size() - 1).attempt_id() != request.attempt_id()) {
    return absl::FailedPreconditionError(absl::StrCat("attempt ", request.attempt_id(), " is not the current attempt of ",
                                                      request.job_id()));
  }
  if (IsTerminal(job.state())) return absl::OkStatus();
  auto* attempt = job.mutable_attempts(job.attempts_size() - 1);
  const int64_t before = attempt->last_tokens();
  attempt->set_last_step(request.progress().step());
  attempt->set_last_tokens(std::max(request.progress().tokens(), attempt->start_tokens()));
  job.set_tokens_consumed(job.tokens_consumed() + std::max<int64_t>(0, attempt->last_tokens() - std::max(before, attempt->start_tokens())));
  const int64_t total_tokens = job.progress().total_tokens();
  *job.mutable_progress() = request.progress();
  job.mutable_progress()->set_total_tokens(total_tokens);
  *job.mutable_progress()->mutable_report_time() = ToProto(absl::Now());
  return Commit(job, {});
}

absl::Status Coordinator::CheckUpload(const v1::UploadCheckpointHeader& h) {
  absl::MutexLock lock(&mu_);
  auto found = FindJob(h.job_id());
  if (!found.ok()) return found.status();
  const v1::Job& job = **found;
  if (job.attempts_size() == 0 || job.attempts(job.attempts_size() - 1).attempt_id() != h.attempt_id() ||
      !HasLiveAttempt(job.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("attempt ", h.attempt_id(), " of ", h.job_id(), " is not running; checkpoint not accepted"));
  }
  if (h.step() <= 0) return absl::InvalidArgumentError("header.step: must be positive");
  if (h.size_bytes() <= 0) return absl::InvalidArgumentError("header.size_bytes: must be positive");
  if (h.sha256().size() != 64) return absl::InvalidArgumentError("header.sha256: must be 64 hex digits");
  return absl::OkStatus();
}

absl::StatusOr<v1::CheckpointInfo> Coordinator::AddCheckpoint(const v1::UploadCheckpointHeader& h,
                                                              const std::string& archive) {
  if (auto st = CheckUpload(h); !st.ok()) return st;
  const std::string dir = absl::StrCat(options_.data_dir, "/checkpoints/", h.job_id());
  const std::string path = absl::StrFormat("%s/step_%09d.tar", dir, h.step());
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (auto st = CommitFile(archive, path); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  auto found = FindJob(h.job_id());
  if (!found.ok()) return found.status();
  v1::Job job = **found;
  StoredCheckpoint c;
  c.path = path;
  c.info.set_job_id(h.job_id());
  c.info.set_step(h.step());
  c.info.set_tokens(h.tokens());
  c.info.set_attempt(job.attempts(job.attempts_size() - 1).number());
  c.info.set_size_bytes(h.size_bytes());
  c.info.set_sha256(h.sha256());
  c.info.set_final(h.final());
  c.info.set_has_evaluation(h.has_evaluation());
  *c.info.mutable_create_time() = ToProto(absl::Now());
  if (auto st = store_->SaveCheckpoint(c); !st.ok()) return st;
  if (metrics_) metrics_->CheckpointStored(h.size_bytes());
  auto& list = checkpoints_[h.job_id()];
  list.erase(std::remove_if(list.begin(), list.end(), [&](const auto& o) { return o.info.step() == h.step(); }),
             list.end());
  list.push_back(c);
  std::sort(list.begin(), list.end(), [](const auto& a, const auto& b) { return a.info.step() < b.info.step(); });
  job.set_latest_checkpoint_step(std::max(job.latest_checkpoint_step(), h.step()));
  std::vector<v1::JobEvent> events = {Event(job, job.state(), v1::FAILURE_REASON_UNSPECIFIED,
                                            absl::StrFormat("checkpoint at step %d stored (%d tokens, %.1f MB%s)",
                                                            h.step(), h.tokens(), h.size_bytes() / 1e6,
                                                            h.final() ? ", final" : ""))};
  if (auto st = Commit(job, std::move(events)); !st.ok()) return st;
  return c.info;
}

absl::Status Coordinator::ReportResult(const v1::ReportResultRequest& r) {
  absl::MutexLock lock(&mu_);
  auto wit = workers_.find(r.worker_id());
  if (wit == workers_.end()) return absl::FailedPreconditionError(absl::StrCat("worker '", r.worker_id(), "' is not registered"));
  Worker& w = wit->second;
  auto& d = w.draining;
  d.erase(std::remove_if(d.begin(), d.end(), [&](const RankSlot& s) { return s.attempt_id == r.attempt_id(); }), d.end());
  auto found = FindJob(r.job_id());
  if (!found.ok()) return found.status();
  v1::Job& job = **found;
  const bool current = job.attempts_size() > 0 && job.attempts(job.attempts_size() - 1).attempt_id() == r.attempt_id();
  if (w.slot && w.slot->attempt_id == r.attempt_id()) w.slot.reset();
  if (!current || !HasLiveAttempt(job.state())) return absl::OkStatus();  // a torn-down attempt ending
  auto& rt = runtime_[job.job_id()];  // exists: the attempt is live
  if (r.rank() >= 0 && r.rank() < static_cast<int>(rt.rank_done.size())) rt.rank_done[r.rank()] = true;
  const std::string where = absl::StrCat("rank ", r.rank(), " on ", r.worker_id());
  switch (OutcomeOf(r)) {
    case v1::RANK_OUTCOME_SUCCEEDED:
    case v1::RANK_OUTCOME_STOPPED: {
      if (r.rank() != 0) {
        if (OutcomeOf(r) == v1::RANK_OUTCOME_STOPPED && !rt.graceful_stop) rt.stop_note = where + ": " + r.message();
        return absl::OkStatus();
      }
      const std::string stop_note = rt.stop_note;
      v1::Job updated = job;
      auto* attempt = updated.mutable_attempts(updated.attempts_size() - 1);
      attempt->set_last_step(std::max(attempt->last_step(), r.final_step()));
      if (r.final_tokens() > attempt->last_tokens()) {
        updated.set_tokens_consumed(updated.tokens_consumed() + r.final_tokens() - attempt->last_tokens());
        attempt->set_last_tokens(r.final_tokens());
      }
      if (r.final_progress().step() >= updated.progress().step() && r.final_progress().step() > 0) {
        const int64_t total_tokens = updated.progress().total_tokens();
        *updated.mutable_progress() = r.final_progress();
        updated.mutable_progress()->set_total_tokens(total_tokens);
        *updated.mutable_progress()->mutable_report_time() = ToProto(absl::Now());
      }
      updated.mutable_progress()->set_step(std::max(updated.progress().step(), r.final_step()));
      updated.mutable_progress()->set_tokens(std::max(updated.progress().tokens(), r.final_tokens()));
      Commit(updated, {}).IgnoreError();
      if (!r.evaluation_json().empty()) {
        v1::Evaluation e;
        e.set_job_id(job.job_id());
        e.set_step(r.final_step());
        e.set_evaluation_json(r.evaluation_json());
        auto j = nlohmann::json::parse(r.evaluation_json(), nullptr, false);
        if (j.is_object()) {
          e.set_fvu(j.value("fvu", 0.0));
          e.set_mse(j.value("mse", 0.0));
          e.set_l0(j.value("l0", 0.0));
          e.set_dead_fraction(j.value("dead_fraction", 0.0));
        }
        if (auto st = store_->SaveEvaluation(e); !st.ok()) return st;
        evaluations_[job.job_id()] = e;
        v1::Job with_eval = jobs_[job.job_id()];
        with_eval.set_has_evaluation(true);
        Commit(with_eval, {}).IgnoreError();
      }
      const bool cancelling = jobs_[job.job_id()].state() == v1::JOB_STATE_CANCELLING;
      if (cancelling) {
        Finish(job.job_id(), v1::JOB_STATE_CANCELLED, v1::FAILURE_REASON_CANCELLED,
               absl::StrFormat("cancelled; final checkpoint at step %d", r.final_step()));
      } else if (OutcomeOf(r) == v1::RANK_OUTCOME_SUCCEEDED) {
        Finish(job.job_id(), v1::JOB_STATE_SUCCEEDED, v1::FAILURE_REASON_UNSPECIFIED,
               absl::StrFormat("trained %d tokens in %d steps", r.final_tokens(), r.final_step()));
      } else {
        // A worker shutting down stops its rank after a final checkpoint: resume elsewhere.
        TearDown(job.job_id(), v1::FAILURE_REASON_WORKER_LOST,
                 absl::StrCat("the gang stopped at step ", r.final_step(), " (",
                              stop_note.empty() ? where + ": " + r.message() : stop_note, ")"));
      }
      return absl::OkStatus();
    }
    case v1::RANK_OUTCOME_RESTORE_FAILED: {
      const int64_t step = job.attempts(job.attempts_size() - 1).resumed_from_step();
      for (auto& c : checkpoints_[job.job_id()]) {
        if (c.info.step() == step && !c.info.bad()) {
          c.info.set_bad(true);
          store_->SaveCheckpoint(c).IgnoreError();
        }
      }
      TearDown(job.job_id(), v1::FAILURE_REASON_CHECKPOINT_RESTORE,
               absl::StrCat(where, " could not restore the checkpoint at step ", step, " (marked bad): ", r.message()));
      return absl::OkStatus();
    }
    case v1::RANK_OUTCOME_PEER_LOST:
      TearDown(job.job_id(), v1::FAILURE_REASON_PEER_LOST, absl::StrCat(where, " lost a peer: ", r.message()));
      return absl::OkStatus();
    default:
      TearDown(job.job_id(), v1::FAILURE_REASON_TRAINING_ERROR,
               absl::StrCat(where, " failed (exit code ", r.exit_code(), "): ", r.message()));
      return absl::OkStatus();
  }
}

// ---- lifecycle --------------------------------------------------------------------------------

void Coordinator::ReleaseRanks(const std::string& job_id, const std::string& attempt_id, bool drain) {
  for (auto& [id, w] : workers_) {
    if (w.slot && w.slot->attempt_id == attempt_id) {
      if (drain && std::find(w.running.begin(), w.running.end(), attempt_id) != w.running.end()) {
        w.draining.push_back(*w.slot);
      }
      w.slot.reset();
    }
  }
}

void Coordinator::Finish(const std::string& job_id, v1::JobState state, v1::FailureReason reason,
                         const std::string& message) {
  v1::Job job = jobs_[job_id];
  if (job.attempts_size() > 0) {
    auto* attempt = job.mutable_attempts(job.attempts_size() - 1);
    if (attempt->end_reason().empty()) {
      attempt->set_end_reason(StateName(state));
      *attempt->mutable_end_time() = ToProto(absl::Now());
    }
    ReleaseRanks(job_id, attempt->attempt_id(), /*drain=*/true);
  }
  runtime_.erase(job_id);
  std::vector<v1::JobEvent> events;
  Transition(job, state, reason, message, &events).IgnoreError();
  Commit(job, std::move(events)).IgnoreError();
}

void Coordinator::TearDown(const std::string& job_id, v1::FailureReason reason, const std::string& message) {
  v1::Job job = jobs_[job_id];
  if (!HasLiveAttempt(job.state())) return;
  if (job.state() == v1::JOB_STATE_CANCELLING) {
    Finish(job_id, v1::JOB_STATE_CANCELLED, v1::FAILURE_REASON_CANCELLED,
           "cancelled; the gang failed before its final checkpoint: " + message);
    return;
  }
  auto* attempt = job.mutable_attempts(job.attempts_size() - 1);
  const StoredCheckpoint* kept = NewestGoodCheckpoint(job_id);
  const int64_t kept_tokens = kept ? kept->info.tokens() : 0;
  attempt->set_end_reason(message);
  *attempt->mutable_end_time() = ToProto(absl::Now());
  attempt->set_lost_tokens(std::max<int64_t>(0, attempt->last_tokens() - std::max(kept_tokens, attempt->start_tokens())));
  ReleaseRanks(job_id, attempt->attempt_id(), /*drain=*/true);
  runtime_.erase(job_id);
  std::vector<v1::JobEvent> events;
  if (job.restarts() >= job.spec().max_restarts()) {
    Transition(job, v1::JOB_STATE_FAILED, reason,
               absl::StrFormat("%s; no restarts left (max_restarts %d)", message, job.spec().max_restarts()), &events)
        .IgnoreError();
  } else {
    job.set_restarts(job.restarts() + 1);
    if (metrics_) metrics_->JobRestarted(reason);
    absl::Duration backoff = options_.restart_backoff_initial;
    for (int i = 1; i < job.restarts() && backoff < options_.restart_backoff_max; ++i) backoff *= 2;
    backoff = std::min(backoff, options_.restart_backoff_max);
    *job.mutable_not_before() = ToProto(absl::Now() + backoff);
    Transition(job, v1::JOB_STATE_RESTARTING, reason,
               absl::StrFormat("%s; restart %d of %d in %s from %s (%d tokens of attempt %d lost)", message,
                               job.restarts(), job.spec().max_restarts(), absl::FormatDuration(backoff),
                               kept ? absl::StrCat("the checkpoint at step ", kept->info.step()) : "scratch",
                               attempt->lost_tokens(), attempt->number()),
               &events).IgnoreError();
  }
  Commit(job, std::move(events)).IgnoreError();
}

absl::Status Coordinator::StartAttempt(v1::Job& job, const std::vector<Worker*>& gang) {
  v1::Attempt attempt;
  attempt.set_number(job.attempts_size() + 1);
  attempt.set_attempt_id(absl::StrCat(job.job_id(), "-", attempt.number()));
  for (Worker* w : gang) attempt.add_worker_ids(w->worker_id);
  Worker& leader = *gang[0];
  const auto& caps = leader.capabilities;
  const int64_t range = caps.rendezvous_port_max() - caps.rendezvous_port_min() + 1;
  attempt.set_rendezvous(absl::StrCat(caps.host(), ":", caps.rendezvous_port_min() + leader.ports_handed_out++ % range));
  const StoredCheckpoint* resume = NewestGoodCheckpoint(job.job_id());
  attempt.set_resumed_from_step(resume ? resume->info.step() : 0);
  attempt.set_start_tokens(resume ? resume->info.tokens() : 0);
  attempt.set_last_tokens(attempt.start_tokens());
  attempt.set_last_step(attempt.resumed_from_step());
  *attempt.mutable_start_time() = ToProto(absl::Now());
  std::vector<std::string> names;
  for (Worker* w : gang) names.push_back(w->worker_id);
  std::vector<v1::JobEvent> events;
  *job.add_attempts() = attempt;
  Transition(job, v1::JOB_STATE_STARTING, v1::FAILURE_REASON_UNSPECIFIED,
             absl::StrFormat("attempt %d: ranks 0..%d on %s; %s", attempt.number(), gang.size() - 1,
                             absl::StrJoin(names, ", "),
                             resume ? absl::StrFormat("resuming from the checkpoint at step %d (%d tokens)",
                                                      resume->info.step(), resume->info.tokens())
                                    : "starting from scratch"),
             &events).IgnoreError();
  if (auto st = Commit(job, std::move(events)); !st.ok()) return st;
  if (metrics_) {
    const absl::Time waited_since = job.restarts() > 0 ? FromProto(job.not_before()) : FromProto(job.create_time());
    metrics_->JobScheduled(absl::ToDoubleSeconds(absl::Now() - waited_since));
  }
  AttemptRuntime rt;
  rt.rank_running.assign(gang.size(), false);
  rt.rank_done.assign(gang.size(), false);
  // A gang whose ranks never all report running is torn down like a lost one.
  rt.reconnect_deadline = absl::Now() + options_.reconnect_grace;
  runtime_[job.job_id()] = rt;
  for (size_t r = 0; r < gang.size(); ++r) gang[r]->slot = RankSlot{job.job_id(), attempt.attempt_id(), static_cast<int>(r)};
  return absl::OkStatus();
}

void Coordinator::Schedule() {
  std::vector<v1::Job*> pending;
  for (auto& [id, job] : jobs_) {
    if (job.state() == v1::JOB_STATE_PENDING) pending.push_back(&job);
  }
  std::stable_sort(pending.begin(), pending.end(), [](const v1::Job* a, const v1::Job* b) {
    if (a->spec().priority() != b->spec().priority()) return a->spec().priority() > b->spec().priority();
    return a->job_id() < b->job_id();  // FIFO: ids increase with submission
  });
  std::map<std::string, std::string> blocked_by;  // device kind -> job that waits for it first
  for (v1::Job* job : pending) {
    const std::string device = DeviceOf(job->spec());
    const int64_t need = GangSize(job->spec());
    std::vector<Worker*> idle;
    int64_t capable = 0;
    for (auto& [id, w] : workers_) {
      const bool fits = w.capabilities.device_kind() == device &&
                        (device != "cuda" || w.capabilities.gpu_count() > 0) &&
                        w.capabilities.memory_bytes() >= job->spec().resources().min_memory_bytes();
      if (!fits || w.state != WorkerState::kConnected) continue;
      ++capable;
      if (!w.slot && w.draining.empty()) idle.push_back(&w);
    }
    const int64_t memory = job->spec().resources().min_memory_bytes();
    const std::string needs =
        absl::StrFormat("needs %d %s workers%s, %d idle of %d suitable", need, device,
                        memory > 0 ? absl::StrFormat(" with %.1f GB", memory / 1e9) : "", idle.size(), capable);
    std::string reason;
    if (capable < need) {
      reason = needs;  // no connected set of workers could run it: it holds up nobody
    } else if (auto b = blocked_by.find(device); b != blocked_by.end()) {
      reason = absl::StrFormat("queued behind %s (higher priority or earlier, also needs %s workers)", b->second, device);
    } else if (static_cast<int64_t>(idle.size()) >= need) {
      idle.resize(need);
      if (StartAttempt(*job, idle).ok()) continue;
      reason = "could not record the assignment in the database";
    } else {
      reason = needs;  // waits for busy workers: keep them for it
      blocked_by[device] = job->job_id();
    }
    if (job->pending_reason() != reason) {
      v1::Job updated = *job;
      updated.set_pending_reason(reason);
      Commit(updated, {}).IgnoreError();
    }
  }
}

void Coordinator::Tick() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  // Workers that missed their heartbeat deadline take their gangs down.
  for (auto& [id, w] : workers_) {
    if (w.state == WorkerState::kLost || now - w.last_seen <= options_.heartbeat_timeout) continue;
    // After a coordinator restart, workers get the reconnect grace, not one heartbeat period.
    if (!w.seen_since_start && now < started_ + options_.reconnect_grace) continue;
    if (w.state == WorkerState::kDisconnected && !w.slot) continue;  // nothing to lose
    w.state = WorkerState::kLost;
    w.draining.clear();
    if (metrics_) metrics_->HeartbeatMissed();
    if (w.slot) {
      const RankSlot slot = *w.slot;
      TearDown(slot.job_id, v1::FAILURE_REASON_WORKER_LOST,
               absl::StrFormat("worker %s (rank %d) missed its heartbeat deadline (%s)", Describe(w), slot.rank,
                               absl::FormatDuration(options_.heartbeat_timeout)));
      w.slot.reset();
    }
  }
  std::vector<std::string> ids;
  for (const auto& [id, job] : jobs_) ids.push_back(id);
  for (const auto& id : ids) {
    v1::Job job = jobs_[id];
    if (IsTerminal(job.state())) continue;
    if (job.spec().deadline_seconds() > 0 &&
        now > FromProto(job.create_time()) + absl::Seconds(job.spec().deadline_seconds())) {
      Finish(id, v1::JOB_STATE_FAILED, v1::FAILURE_REASON_DEADLINE_EXCEEDED,
             absl::StrFormat("deadline of %d s after submission passed", job.spec().deadline_seconds()));
      continue;
    }
    if (job.state() == v1::JOB_STATE_RESTARTING && now >= FromProto(job.not_before())) {
      std::vector<v1::JobEvent> events;
      Transition(job, v1::JOB_STATE_PENDING, v1::FAILURE_REASON_UNSPECIFIED,
                 absl::StrCat("waiting for a new gang (restart ", job.restarts(), ")"), &events).IgnoreError();
      Commit(job, std::move(events)).IgnoreError();
      continue;
    }
    auto rt = runtime_.find(id);
    if (rt == runtime_.end() || !HasLiveAttempt(job.state())) continue;
    if (job.state() == v1::JOB_STATE_CANCELLING && now > rt->second.stop_deadline) {
      Finish(id, v1::JOB_STATE_CANCELLED, v1::FAILURE_REASON_CANCELLED,
             "cancelled; the ranks did not finish a final checkpoint within the grace period");
      continue;
    }
    const bool all_running = std::all_of(rt->second.rank_running.begin(), rt->second.rank_running.end(),
                                         [](bool b) { return b; });
    if (!all_running && now > rt->second.reconnect_deadline) {
      TearDown(id, v1::FAILURE_REASON_COORDINATOR_RESTART,
               absl::StrFormat("not every rank of attempt %d reported running within %s",
                               job.attempts(job.attempts_size() - 1).number(),
                               absl::FormatDuration(options_.reconnect_grace)));
    }
  }
  Schedule();
  if (metrics_) {
    std::map<std::string, int> workers = {{"idle", 0}, {"busy", 0}, {"disconnected", 0}, {"lost", 0}};
    for (const auto& [id, w] : workers_) {
      if (w.state == WorkerState::kLost) ++workers["lost"];
      else if (w.state == WorkerState::kDisconnected) ++workers["disconnected"];
      else if (w.slot || !w.draining.empty()) ++workers["busy"];
      else ++workers["idle"];
    }
    std::map<std::string, const v1::Evaluation*> evaluations;
    for (const auto& [id, e] : evaluations_) evaluations[id] = &e;
    metrics_->Refresh(jobs_, workers, evaluations, now);
  }
}

}  // namespace saegrid::coordinator
