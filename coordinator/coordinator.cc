#include "coordinator/coordinator.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "coordinator/attempt_accounting.h"
#include "coordinator/bounded_text.h"
#include "base/device_name.h"
#include "base/durable_file.h"
#include "coordinator/job_lifecycle.h"
#include "coordinator/scheduler.h"
#include "coordinator/upload_validation.h"
#include "engine/activation/architecture_names.h"
#include "google/protobuf/util/message_differencer.h"
#include "spec/memory_estimate.h"
#include "spec/scheduling_fields.h"
#include "spec/train_config.h"

namespace saegrid::coordinator {
namespace {

namespace fs = std::filesystem;

bool FiniteNonNegative(double v) { return std::isfinite(v) && v >= 0; }
bool Fraction(double v) { return std::isfinite(v) && v >= 0 && v <= 1; }

}  // namespace

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Open(const CoordinatorOptions& options) {
  std::error_code ec;
  for (const std::string& dir : {options.data_dir, options.data_dir + "/tmp", options.data_dir + "/checkpoints"}) {
    fs::create_directories(dir, ec);
    if (ec) return absl::FailedPreconditionError(absl::StrCat("--data-dir: cannot create ", dir, ": ", ec.message()));
  }
  // Partial uploads of a previous run are garbage.
  for (const auto& entry : fs::directory_iterator(options.data_dir + "/tmp", ec)) fs::remove(entry.path(), ec);
  auto store = Store::Open(options.data_dir + "/saegrid.db", options.store_busy_timeout);
  if (!store.ok()) return store.status();
  auto credentials = RankCredentials::Open(options.data_dir + "/rank_credential.key");
  if (!credentials.ok()) return credentials.status();
  std::unique_ptr<Coordinator> c(new Coordinator(options, *std::move(store), *std::move(credentials)));
  if (auto st = c->Recover(); !st.ok()) return st;
  return c;
}

Coordinator::Coordinator(const CoordinatorOptions& options, std::unique_ptr<Store> store,
                         std::unique_ptr<RankCredentials> credentials)
    : options_(options),
      store_(std::move(store)),
      credentials_(std::move(credentials)),
      registry_(options.heartbeat_timeout) {
  if (options_.clock == nullptr) options_.clock = &real_clock_;
  started_ = Now();
}

absl::Status Coordinator::health() const { return store_->health(); }

namespace {

// The figures reports are checked against; `config` is the job's validated configuration.
template <typename Shape>
Shape ShapeOf(const v1::JobSpec& spec, const TrainConfig& config) {
  Shape s;
  s.batch_size = std::max<int64_t>(1, config.data.batch_size);
  s.total_steps = (config.training.total_tokens + s.batch_size - 1) / s.batch_size;
  s.d_in = config.model.d_in > 0 ? config.model.d_in : (config.data.use_synthetic ? config.data.synthetic.d : 0);
  s.num_latents = config.model.num_latents > 0 ? config.model.num_latents : s.d_in * config.model.expansion_factor;
  s.k = config.model.k;
  s.architecture = std::string(ArchitectureName(config.model.architecture));
  s.hookpoint = config.checkpoint.hookpoint;
  // The kind of device ("cuda:1" places like "cuda": the index is the worker's business).
  const auto device = ParseDeviceName(spec.parallelism().device());
  s.device = device ? device->kind : "cpu";
  s.gang_size = config.parallelism.shards * config.parallelism.replicas;
  s.memory_per_rank = std::max(spec.resources().min_memory_bytes(), EstimateRankMemory(config).total());
  return s;
}

}  // namespace

absl::Status Coordinator::Recover() {
  absl::MutexLock lock(&mu_);
  auto state = store_->LoadAll();
  if (!state.ok()) return state.status();
  const absl::Time now = Now();
  for (auto& job : state->jobs) {
    int64_t number = 0;
    if (absl::SimpleAtoi(job.job_id().substr(job.job_id().rfind('-') + 1), &number)) {
      next_job_number_ = std::max(next_job_number_, number + 1);
    }
    auto config = ToTrainConfig(job.spec());
    if (config.ok()) {
      shapes_[job.job_id()] = ShapeOf<JobShape>(job.spec(), *config);
    } else {
      // Accepted by an older version with other rules: it keeps its history but cannot run.
      shapes_[job.job_id()] = JobShape{};
    }
    job_by_request_[job.request_id()] = job.job_id();
    if (HasLiveAttempt(job.state()) && job.attempts_size() > 0) {
      // The gang may still be running: its workers get reconnect_grace to say so.
      const auto& attempt = *CurrentAttempt(job);
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
  for (const auto& w : state->workers) registry_.Restore(w);
  // Give back to each worker the rank the store says it runs; it may run it already.
  for (const auto& [job_id, rt] : runtime_) {
    const auto& attempt = *CurrentAttempt(jobs_[job_id]);
    for (int r = 0; r < attempt.worker_ids_size(); ++r) {
      if (WorkerRecord* w = registry_.Find(attempt.worker_ids(r))) {
        w->slot = RankSlot{job_id, attempt.attempt_id(), r, /*start_sent=*/true};
      }
    }
  }
  for (auto& c : state->checkpoints) catalog_.Put(std::move(c));
  for (auto& e : state->evaluations) evaluations_[e.job_id()] = std::move(e);
  return absl::OkStatus();
}

absl::Status Coordinator::Commit(v1::Job job, std::vector<v1::JobEvent> events) {
  int64_t revision = job.revision();
  for (auto& e : events) e.set_revision(++revision);
  if (events.empty()) ++revision;
  job.set_revision(revision);
  *job.mutable_update_time() = ToProto(Now());
  if (auto st = store_->SaveJob(job, &events); !st.ok()) return st;
  auto& history = events_[job.job_id()];
  for (auto& e : events) history.push_back(std::move(e));
  jobs_[job.job_id()] = std::move(job);
  return absl::OkStatus();
}

void Coordinator::CommitOrLog(v1::Job job, std::vector<v1::JobEvent> events) {
  const std::string id = job.job_id();
  const bool was_healthy = health().ok();  // a sticky failure is logged once, when it happens
  if (auto st = Commit(std::move(job), std::move(events)); !st.ok() && was_healthy) {
    std::fprintf(stderr, "saegrid-coordinator: job %s: %s\n", id.c_str(), std::string(st.message()).c_str());
  }
}

absl::StatusOr<v1::Job*> Coordinator::FindJob(const std::string& job_id) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job ", Quote(job_id), " not found"));
  return &it->second;
}

absl::StatusOr<const v1::Attempt*> Coordinator::VerifyRank(const v1::Job& job, const std::string& attempt_id,
                                                           int rank, const std::string& worker_id,
                                                           const std::string& credential) {
  const v1::Attempt* attempt = nullptr;
  for (const auto& a : job.attempts()) {
    if (a.attempt_id() == attempt_id) attempt = &a;
  }
  // One message for every mismatch: a caller without the credential learns nothing from it.
  const auto denied = [&] {
    return absl::PermissionDeniedError(absl::StrCat("rank ", rank, " of attempt ", Quote(attempt_id), " of ",
                                                    job.job_id(), ": the caller is not the worker it was assigned "
                                                    "to, or the rank credential is wrong"));
  };
  if (attempt == nullptr || rank < 0 || rank >= attempt->worker_ids_size()) return denied();
  if (attempt->worker_ids(rank) != worker_id || !credentials_->Verify(attempt_id, rank, credential)) return denied();
  return attempt;
}

absl::StatusOr<v1::Job*> Coordinator::VerifyLiveRank(const std::string& job_id, const std::string& attempt_id,
                                                     int rank, const std::string& worker_id,
                                                     const std::string& credential) {
  auto job = FindJob(job_id);
  if (!job.ok()) return job.status();
  auto attempt = VerifyRank(**job, attempt_id, rank, worker_id, credential);
  if (!attempt.ok()) return attempt.status();
  if (*attempt != CurrentAttempt(**job) || !HasLiveAttempt((*job)->state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("attempt ", attempt_id, " of ", job_id, " is not running (the job is ",
                     StateName((*job)->state()), ")"));
  }
  return *job;
}

// ---- client API -------------------------------------------------------------------------------

absl::StatusOr<v1::SubmitJobResponse> Coordinator::SubmitJob(const v1::SubmitJobRequest& request) {
  if (request.request_id().empty() || request.request_id().size() > 128) {
    return absl::InvalidArgumentError("request_id: required, at most 128 characters");
  }
  if (auto st = ValidateSchedulingFields(request.spec()); !st.ok()) return st;
  auto config = ToTrainConfig(request.spec());
  if (!config.ok()) return config.status();
  if (auto st = ValidateRankMemory(*config); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  if (auto st = health(); !st.ok()) return st;
  if (auto it = job_by_request_.find(request.request_id()); it != job_by_request_.end()) {
    const v1::Job& existing = jobs_[it->second];
    if (!google::protobuf::util::MessageDifferencer::Equals(existing.spec(), request.spec())) {
      return absl::AlreadyExistsError(absl::StrCat("request_id ", Quote(request.request_id()), " was used for job ",
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
  *job.mutable_create_time() = ToProto(Now());
  job.set_state(v1::JOB_STATE_UNSPECIFIED);
  const JobShape shape = ShapeOf<JobShape>(request.spec(), *config);
  std::vector<v1::JobEvent> events;
  auto st = Transition(job, v1::JOB_STATE_PENDING, v1::FAILURE_REASON_UNSPECIFIED,
                       absl::StrFormat("submitted: %d shards x %d replicas on %s, %d tokens, about %s per rank",
                                       config->parallelism.shards, config->parallelism.replicas, shape.device,
                                       config->training.total_tokens, EstimateRankMemory(*config).ToString()),
                       Now(), &events);
  if (!st.ok()) return st;
  job.mutable_progress()->set_total_tokens(config->training.total_tokens);
  job.mutable_progress()->set_total_steps(shape.total_steps);
  if (auto st = Commit(job, std::move(events)); !st.ok()) return st;
  ++next_job_number_;
  job_by_request_[request.request_id()] = job.job_id();
  shapes_[job.job_id()] = shape;
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
  if (!after.empty() && (after.rfind("job-", 0) != 0 || after.size() > 32)) {
    return absl::InvalidArgumentError(absl::StrCat("page_token: ", Quote(after), " is not a token from ListJobs"));
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
  if (auto st = health(); !st.ok()) return st;
  std::vector<v1::JobEvent> events;
  if (!HasLiveAttempt(job.state())) {
    auto st = Transition(job, v1::JOB_STATE_CANCELLED, v1::FAILURE_REASON_CANCELLED, "cancelled before it started",
                         Now(), &events);
    if (!st.ok()) return st;
    if (auto st = Commit(job, std::move(events)); !st.ok()) return st;
    return jobs_[job_id];
  }
  if (grace <= absl::ZeroDuration()) grace = options_.default_cancel_grace;
  auto st = Transition(job, v1::JOB_STATE_CANCELLING, v1::FAILURE_REASON_UNSPECIFIED,
                       absl::StrCat("cancelling: ranks write a final checkpoint within ", absl::FormatDuration(grace)),
                       Now(), &events);
  if (!st.ok()) return st;
  if (auto st = Commit(job, std::move(events)); !st.ok()) return st;
  auto& rt = runtime_[job_id];
  rt.graceful_stop = true;
  rt.stop_deadline = Now() + grace;
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
  return catalog_.List(job_id);
}

absl::StatusOr<std::pair<v1::CheckpointInfo, std::string>> Coordinator::FindCheckpoint(const std::string& job_id,
                                                                                      int64_t step) {
  absl::MutexLock lock(&mu_);
  if (auto job = FindJob(job_id); !job.ok()) return job.status();
  const StoredCheckpoint* c = step == 0 ? catalog_.NewestGood(job_id) : catalog_.Find(job_id, step);
  if (c == nullptr) {
    return absl::NotFoundError(step == 0 ? absl::StrCat("job ", job_id, " has no checkpoint yet")
                                         : absl::StrCat("job ", job_id, " has no checkpoint at step ", step));
  }
  return std::make_pair(c->info, c->path);
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

absl::StatusOr<v1::RegisterWorkerResponse> Coordinator::RegisterWorker(const v1::RegisterWorkerRequest& request) {
  if (auto st = WorkerRegistry::Validate(request); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  if (auto st = health(); !st.ok()) return st;
  const absl::Time now = Now();
  // Persist first: a registration that is not on disk is not acknowledged.
  if (auto st = store_->SaveWorker(StoredWorker{request.worker_id(), request.capabilities(), absl::ToUnixMillis(now)});
      !st.ok()) {
    return st;
  }
  auto registered = registry_.Register(request, RandomToken(), now);
  if (!registered.ok()) return registered.status();
  WorkerRecord& w = **registered;
  v1::RegisterWorkerResponse response;
  response.set_heartbeat_interval_seconds(absl::ToDoubleSeconds(options_.heartbeat_interval));
  response.set_session(w.session);
  // Reconcile what it runs with what the store says it should run.
  w.draining.clear();
  w.running.clear();
  for (const auto& r : request.running()) {
    w.running.push_back(r.attempt_id());
    const bool wanted = w.slot && w.slot->attempt_id == r.attempt_id() && w.slot->rank == r.rank();
    if (wanted) {
      auto rt = runtime_.find(w.slot->job_id);
      if (rt != runtime_.end() && r.rank() >= 0 && r.rank() < static_cast<int>(rt->second.rank_running.size())) {
        rt->second.rank_running[r.rank()] = true;
      }
    } else {
      w.draining.push_back(RankSlot{r.job_id(), r.attempt_id(), r.rank(), true});
      response.add_stop_attempt_ids(r.attempt_id());
    }
  }
  return response;
}

absl::StatusOr<v1::WorkerCommands> Coordinator::Heartbeat(const v1::WorkerHeartbeat& heartbeat) {
  absl::MutexLock lock(&mu_);
  auto found = registry_.Heartbeat(heartbeat, Now());
  if (!found.ok()) return found.status();
  v1::WorkerCommands commands;
  CommandsFor(**found, &commands);
  return commands;
}

void Coordinator::CommandsFor(WorkerRecord& w, v1::WorkerCommands* commands) {
  // Ranks to stop now: torn-down gangs, finished or expired jobs.
  std::vector<RankSlot> still_draining;
  for (const auto& d : w.draining) {
    if (!w.Runs(d.attempt_id)) continue;
    still_draining.push_back(d);
    commands->add_stop()->set_attempt_id(d.attempt_id);
  }
  w.draining = std::move(still_draining);
  auto rt_it = w.slot ? runtime_.find(w.slot->job_id) : runtime_.end();
  if (w.slot && (rt_it == runtime_.end() || w.slot->rank >= static_cast<int>(rt_it->second.rank_running.size()))) {
    w.slot.reset();  // a slot without a live attempt behind it: nothing to run
  }
  if (!w.slot) return;
  v1::Job& job = jobs_[w.slot->job_id];
  AttemptRuntime& rt = rt_it->second;
  const v1::Attempt& attempt = *CurrentAttempt(job);
  const int rank = w.slot->rank;
  if (w.Runs(w.slot->attempt_id)) {
    if (!rt.rank_running[rank]) {
      rt.rank_running[rank] = true;
      if (job.state() == v1::JOB_STATE_STARTING &&
          std::all_of(rt.rank_running.begin(), rt.rank_running.end(), [](bool b) { return b; })) {
        v1::Job updated = job;
        std::vector<v1::JobEvent> events;
        if (Transition(updated, v1::JOB_STATE_RUNNING, v1::FAILURE_REASON_UNSPECIFIED,
                       absl::StrCat("attempt ", attempt.number(), ": all ", attempt.worker_ids_size(), " ranks running"),
                       Now(), &events)
                .ok()) {
          if (!job.has_start_time()) *updated.mutable_start_time() = ToProto(Now());
          CommitOrLog(std::move(updated), std::move(events));
        }
      }
    }
    if (rt.graceful_stop && !rt.rank_done[rank]) {
      auto* stop = commands->add_stop();
      stop->set_attempt_id(w.slot->attempt_id);
      stop->set_final_checkpoint(true);
      stop->set_grace_seconds(std::max(0.0, absl::ToDoubleSeconds(rt.stop_deadline - Now())));
    }
  } else if (rt.rank_running[rank] && !rt.rank_done[rank]) {
    // It ran the rank and no longer does, without a result: the worker restarted.
    TearDown(job.job_id(), v1::FAILURE_REASON_WORKER_LOST,
             absl::StrFormat("worker %s no longer runs rank %d", w.Describe(), rank));
  } else if (!rt.rank_done[rank] && job.state() == v1::JOB_STATE_STARTING && health().ok()) {
    auto* a = commands->add_start();
    a->set_job_id(job.job_id());
    a->set_attempt_id(attempt.attempt_id());
    a->set_attempt_number(attempt.number());
    a->set_rank(rank);
    a->set_world_size(attempt.worker_ids_size());
    a->set_rendezvous(attempt.rendezvous());
    *a->mutable_spec() = job.spec();
    a->set_rank_credential(credentials_->Issue(attempt.attempt_id(), rank));
    if (attempt.resumed_from_step() > 0) {
      if (const StoredCheckpoint* c = catalog_.Find(job.job_id(), attempt.resumed_from_step())) {
        *a->mutable_resume_from() = c->info;
      }
    }
    w.slot->start_sent = true;
  }
}

void Coordinator::WorkerStreamClosed(const std::string& worker_id, const std::string& session) {
  absl::MutexLock lock(&mu_);
  registry_.StreamClosed(worker_id, session);
}

absl::Status Coordinator::ValidateProgress(const JobShape& shape, const v1::Attempt& attempt,
                                           const v1::TrainingProgress& p) const {
  const auto bad = [](const char* field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("progress.", field, ": ", why));
  };
  if (p.step() < std::max<int64_t>(1, attempt.resumed_from_step()) || p.step() > shape.total_steps) {
    return bad("step", absl::StrCat("must be in [", std::max<int64_t>(1, attempt.resumed_from_step()), ", ",
                                    shape.total_steps, "], got ", p.step()));
  }
  if (p.tokens() != p.step() * shape.batch_size) {
    return bad("tokens", absl::StrCat("must be step x batch size = ", p.step() * shape.batch_size, ", got ",
                                      p.tokens()));
  }
  if (p.total_steps() != 0 && p.total_steps() != shape.total_steps) {
    return bad("total_steps", absl::StrCat("the job has ", shape.total_steps, ", got ", p.total_steps()));
  }
  for (const auto& [field, value] :
       {std::pair{"loss", p.loss()}, std::pair{"fvu", p.fvu()}, std::pair{"mse", p.mse()},
        std::pair{"auxk_loss", p.auxk_loss()}, std::pair{"l0", p.l0()}, std::pair{"lr", p.lr()},
        std::pair{"tokens_per_second", p.tokens_per_second()}, std::pair{"step_seconds", p.step_seconds()}}) {
    if (!FiniteNonNegative(value)) return bad(field, absl::StrCat("must be finite and >= 0, got ", value));
  }
  for (const auto& [field, value] :
       {std::pair{"dead_fraction", p.dead_fraction()}, std::pair{"overflow_rate", p.overflow_rate()}}) {
    if (!Fraction(value)) return bad(field, absl::StrCat("must be in [0, 1], got ", value));
  }
  if (p.num_dead() < 0 || (shape.num_latents > 0 && p.num_dead() > shape.num_latents)) {
    return bad("num_dead", absl::StrCat("must be in [0, ", shape.num_latents, "], got ", p.num_dead()));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::ReportProgress(const v1::ReportProgressRequest& request) {
  absl::MutexLock lock(&mu_);
  auto found = VerifyLiveRank(request.job_id(), request.attempt_id(), request.rank(), request.worker_id(),
                              request.rank_credential());
  if (!found.ok()) return found.status();
  if (request.rank() != 0) return absl::InvalidArgumentError("rank: only rank 0 reports progress");
  if (auto st = health(); !st.ok()) return st;
  v1::Job job = **found;
  v1::Attempt& attempt = *MutableCurrentAttempt(job);
  if (auto st = ValidateProgress(shapes_[job.job_id()], attempt, request.progress()); !st.ok()) return st;
  attempt.set_last_step(std::max(attempt.last_step(), request.progress().step()));
  RecordTokensReached(job, request.progress().tokens());
  const int64_t total_tokens = job.progress().total_tokens();
  *job.mutable_progress() = request.progress();
  job.mutable_progress()->set_total_tokens(total_tokens);
  job.mutable_progress()->set_total_steps(shapes_[job.job_id()].total_steps);
  *job.mutable_progress()->mutable_report_time() = ToProto(Now());
  return Commit(job, {});
}

absl::Status Coordinator::CheckUpload(const v1::UploadCheckpointHeader& h) {
  absl::MutexLock lock(&mu_);
  auto found = VerifyLiveRank(h.job_id(), h.attempt_id(), h.rank(), h.worker_id(), h.rank_credential());
  if (!found.ok()) return found.status();
  if (auto st = health(); !st.ok()) return st;
  if (h.rank() != 0) return absl::InvalidArgumentError("header.rank: only rank 0 uploads checkpoints");
  const JobShape& shape = shapes_[h.job_id()];
  const v1::Attempt& attempt = *CurrentAttempt(**found);
  if (h.step() <= attempt.resumed_from_step() || h.step() > shape.total_steps) {
    return absl::InvalidArgumentError(absl::StrCat("header.step: must be in [", attempt.resumed_from_step() + 1, ", ",
                                                   shape.total_steps, "], got ", h.step()));
  }
  if (h.tokens() != h.step() * shape.batch_size) {
    return absl::InvalidArgumentError(absl::StrCat("header.tokens: must be step x batch size = ",
                                                   h.step() * shape.batch_size, ", got ", h.tokens()));
  }
  if (h.size_bytes() <= 0) return absl::InvalidArgumentError("header.size_bytes: must be positive");
  if (h.size_bytes() > kMaxCheckpointBytes) {
    return absl::InvalidArgumentError(absl::StrCat("header.size_bytes: at most ", kMaxCheckpointBytes));
  }
  if (h.sha256().size() != 64) return absl::InvalidArgumentError("header.sha256: must be 64 hex digits");
  return absl::OkStatus();
}

absl::StatusOr<v1::CheckpointInfo> Coordinator::AddCheckpoint(const v1::UploadCheckpointHeader& h,
                                                              const std::string& archive) {
  if (auto st = CheckUpload(h); !st.ok()) return st;
  JobShape shape;
  {
    absl::MutexLock lock(&mu_);
    shape = shapes_[h.job_id()];
  }
  // Outside the lock: it reads the archive.
  UploadExpectation expected{h.step(), h.tokens(), shape.d_in, shape.num_latents, shape.k, shape.architecture,
                             shape.hookpoint};
  if (auto st = ValidateUploadedCheckpoint(archive, expected); !st.ok()) return st;
  const std::string dir = absl::StrCat(options_.data_dir, "/checkpoints/", h.job_id());
  const std::string path = absl::StrFormat("%s/step_%09d.tar", dir, h.step());
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  absl::MutexLock lock(&mu_);
  // Checked again under the lock: the attempt may have ended while the archive was read.
  auto found = VerifyLiveRank(h.job_id(), h.attempt_id(), h.rank(), h.worker_id(), h.rank_credential());
  if (!found.ok()) return found.status();
  if (auto st = health(); !st.ok()) return st;
  if (auto st = CommitFile(archive, path); !st.ok()) return st;
  v1::Job job = **found;
  StoredCheckpoint c;
  c.path = path;
  c.info.set_job_id(h.job_id());
  c.info.set_step(h.step());
  c.info.set_tokens(h.tokens());
  c.info.set_attempt(CurrentAttempt(job)->number());
  c.info.set_size_bytes(h.size_bytes());
  c.info.set_sha256(h.sha256());
  c.info.set_final(h.final());
  c.info.set_has_evaluation(h.has_evaluation());
  *c.info.mutable_create_time() = ToProto(Now());
  if (auto st = store_->SaveCheckpoint(c); !st.ok()) return st;
  if (metrics_) metrics_->CheckpointStored(h.size_bytes());
  catalog_.Put(c);
  job.set_latest_checkpoint_step(std::max(job.latest_checkpoint_step(), h.step()));
  // The checkpoint proves the attempt got this far, whatever its progress reports said.
  RecordTokensReached(job, h.tokens());
  MutableCurrentAttempt(job)->set_last_step(std::max(CurrentAttempt(job)->last_step(), h.step()));
  std::vector<v1::JobEvent> events = {MakeEvent(job, job.state(), v1::FAILURE_REASON_UNSPECIFIED,
                                                absl::StrFormat("checkpoint at step %d stored (%d tokens, %.1f MB%s)",
                                                                h.step(), h.tokens(), h.size_bytes() / 1e6,
                                                                h.final() ? ", final" : ""),
                                                Now())};
  if (auto st = Commit(job, std::move(events)); !st.ok()) return st;
  return c.info;
}

absl::StatusOr<std::pair<v1::CheckpointInfo, std::string>> Coordinator::AuthorizeFetch(
    const v1::FetchCheckpointRequest& request) {
  absl::MutexLock lock(&mu_);
  auto job = FindJob(request.job_id());
  if (!job.ok()) return job.status();
  // A fetch names no worker: the credential alone proves the rank, since only the worker it was
  // assigned to received it.
  const v1::Attempt* attempt = CurrentAttempt(**job);
  if (attempt == nullptr || attempt->attempt_id() != request.attempt_id() || request.rank() < 0 ||
      request.rank() >= attempt->worker_ids_size() ||
      !credentials_->Verify(request.attempt_id(), request.rank(), request.rank_credential())) {
    return absl::PermissionDeniedError(absl::StrCat("rank ", request.rank(), " of attempt ",
                                                    Quote(request.attempt_id()), " of ", request.job_id(),
                                                    ": not the current attempt, or the rank credential is wrong"));
  }
  if (!HasLiveAttempt((*job)->state())) {
    return absl::FailedPreconditionError(absl::StrCat("attempt ", request.attempt_id(), " is not running"));
  }
  if (request.step() != attempt->resumed_from_step() || request.step() <= 0) {
    return absl::PermissionDeniedError(absl::StrCat("attempt ", request.attempt_id(), " resumes from step ",
                                                    attempt->resumed_from_step(), ", not ", request.step()));
  }
  const StoredCheckpoint* c = catalog_.Find(request.job_id(), request.step());
  if (c == nullptr) return absl::NotFoundError(absl::StrCat("no checkpoint at step ", request.step()));
  return std::make_pair(c->info, c->path);
}

absl::Status Coordinator::FinishRank0(v1::Job& job, AttemptRuntime& rt, const v1::ReportResultRequest& r,
                                      const std::string& where) {
  const JobShape& shape = shapes_[job.job_id()];
  const v1::Attempt& current = *CurrentAttempt(job);
  if (r.final_step() < current.resumed_from_step() || r.final_step() > shape.total_steps ||
      r.final_tokens() != r.final_step() * shape.batch_size) {
    return absl::InvalidArgumentError(absl::StrCat("final_step/final_tokens: ", r.final_step(), " steps and ",
                                                   r.final_tokens(), " tokens do not fit the job (", shape.total_steps,
                                                   " steps of ", shape.batch_size, " tokens, resumed at step ",
                                                   current.resumed_from_step(), ")"));
  }
  const bool cancelling = job.state() == v1::JOB_STATE_CANCELLING;
  const bool succeeded = r.outcome() == v1::RANK_OUTCOME_SUCCEEDED && !cancelling;
  if (succeeded && r.final_step() != shape.total_steps) {
    return absl::InvalidArgumentError(absl::StrCat("final_step: a succeeded rank trained all ", shape.total_steps,
                                                   " steps, got ", r.final_step()));
  }
  const StoredCheckpoint* final_checkpoint = r.final_step() > 0 ? catalog_.Find(job.job_id(), r.final_step()) : nullptr;
  if (succeeded && (final_checkpoint == nullptr || final_checkpoint->info.bad())) {
    TearDown(job.job_id(), v1::FAILURE_REASON_TRAINING_ERROR,
             absl::StrCat(where, " finished, but its final checkpoint at step ", r.final_step(), " was not stored"));
    return absl::OkStatus();
  }
  if (r.has_evaluation()) {
    const v1::Evaluation& e = r.evaluation();
    if (!FiniteNonNegative(e.fvu()) || !FiniteNonNegative(e.mse()) || !FiniteNonNegative(e.l0()) ||
        !Fraction(e.dead_fraction())) {
      return absl::InvalidArgumentError("evaluation: fvu, mse and l0 must be finite and >= 0, dead_fraction in [0, 1]");
    }
  }
  if (auto st = health(); !st.ok()) return st;
  const std::string stop_note = rt.stop_note;
  v1::Job updated = job;
  v1::Attempt& attempt = *MutableCurrentAttempt(updated);
  attempt.set_last_step(std::max(attempt.last_step(), r.final_step()));
  RecordTokensReached(updated, r.final_tokens());
  if (r.final_progress().step() >= updated.progress().step() && r.final_progress().step() > 0 &&
      ValidateProgress(shape, attempt, r.final_progress()).ok()) {
    const int64_t total_tokens = updated.progress().total_tokens();
    *updated.mutable_progress() = r.final_progress();
    updated.mutable_progress()->set_total_tokens(total_tokens);
    updated.mutable_progress()->set_total_steps(shape.total_steps);
    *updated.mutable_progress()->mutable_report_time() = ToProto(Now());
  }
  updated.mutable_progress()->set_step(r.final_step());
  updated.mutable_progress()->set_tokens(r.final_tokens());
  if (r.has_evaluation() || !r.evaluation_json().empty()) {
    v1::Evaluation e = r.evaluation();
    e.set_job_id(job.job_id());
    e.set_step(r.final_step());
    e.set_evaluation_json(r.evaluation_json());
    if (auto st = store_->SaveEvaluation(e); !st.ok()) return st;
    evaluations_[job.job_id()] = e;
    updated.set_has_evaluation(true);
  }
  if (auto st = Commit(updated, {}); !st.ok()) return st;
  if (cancelling) {
    Finish(job.job_id(), v1::JOB_STATE_CANCELLED, v1::FAILURE_REASON_CANCELLED,
           absl::StrFormat("cancelled; final checkpoint at step %d", r.final_step()));
  } else if (succeeded) {
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

absl::Status Coordinator::ReportResult(const v1::ReportResultRequest& r) {
  absl::MutexLock lock(&mu_);
  auto found = FindJob(r.job_id());
  if (!found.ok()) return found.status();
  v1::Job& job = **found;
  auto attempt = VerifyRank(job, r.attempt_id(), r.rank(), r.worker_id(), r.rank_credential());
  if (!attempt.ok()) return attempt.status();
  if (r.message().size() > 16384) return absl::InvalidArgumentError("message: at most 16384 bytes");
  if (WorkerRecord* w = registry_.Find(r.worker_id())) {
    auto& d = w->draining;
    d.erase(std::remove_if(d.begin(), d.end(), [&](const RankSlot& s) { return s.attempt_id == r.attempt_id(); }),
            d.end());
    if (w->slot && w->slot->attempt_id == r.attempt_id()) w->slot.reset();
  }
  if (*attempt != CurrentAttempt(job) || !HasLiveAttempt(job.state())) return absl::OkStatus();  // a torn-down attempt ending
  auto& rt = runtime_[job.job_id()];  // exists: the attempt is live
  if (r.rank() < static_cast<int>(rt.rank_done.size())) rt.rank_done[r.rank()] = true;
  const std::string where = absl::StrCat("rank ", r.rank(), " on ", r.worker_id());
  const std::string message = Quote(r.message(), 4000);
  switch (r.outcome()) {
    case v1::RANK_OUTCOME_SUCCEEDED:
    case v1::RANK_OUTCOME_STOPPED:
      if (r.rank() != 0) {
        if (r.outcome() == v1::RANK_OUTCOME_STOPPED && !rt.graceful_stop) rt.stop_note = where + ": " + r.message();
        return absl::OkStatus();
      }
      return FinishRank0(job, rt, r, where);
    case v1::RANK_OUTCOME_RESTORE_FAILED: {
      const int64_t step = attempt.value()->resumed_from_step();
      if (const StoredCheckpoint* c = catalog_.Find(job.job_id(), step); c != nullptr && !c->info.bad()) {
        StoredCheckpoint marked = *c;
        marked.info.set_bad(true);
        if (auto st = store_->SaveCheckpoint(marked); !st.ok()) return st;
        catalog_.Put(std::move(marked));
      }
      TearDown(job.job_id(), v1::FAILURE_REASON_CHECKPOINT_RESTORE,
               absl::StrCat(where, " could not restore the checkpoint at step ", step, " (marked bad): ", r.message()));
      return absl::OkStatus();
    }
    case v1::RANK_OUTCOME_PEER_LOST:
      TearDown(job.job_id(), v1::FAILURE_REASON_PEER_LOST, absl::StrCat(where, " lost a peer: ", r.message()));
      return absl::OkStatus();
    case v1::RANK_OUTCOME_INVALID_CONFIG:
    case v1::RANK_OUTCOME_OUT_OF_MEMORY: {
      const bool oom = r.outcome() == v1::RANK_OUTCOME_OUT_OF_MEMORY;
      // Deterministic: another attempt would fail the same way.
      Finish(job.job_id(), v1::JOB_STATE_FAILED,
             oom ? v1::FAILURE_REASON_OUT_OF_MEMORY : v1::FAILURE_REASON_INVALID_CONFIG,
             absl::StrCat(where, oom ? " ran out of memory" : " refused the job's configuration",
                          " (not retried): ", r.message()));
      return absl::OkStatus();
    }
    default:
      TearDown(job.job_id(), v1::FAILURE_REASON_TRAINING_ERROR,
               absl::StrCat(where, " failed", r.message().empty() ? absl::StrCat(" (exit code ", r.exit_code(), ")") : "",
                            ": ", r.message()));
      return absl::OkStatus();
  }
}

// ---- lifecycle --------------------------------------------------------------------------------

void Coordinator::Finish(const std::string& job_id, v1::JobState state, v1::FailureReason reason,
                         const std::string& message) {
  v1::Job job = jobs_[job_id];
  if (v1::Attempt* attempt = MutableCurrentAttempt(job); attempt != nullptr && HasLiveAttempt(job.state())) {
    if (attempt->end_reason().empty()) {
      attempt->set_end_reason(StateName(state));
      *attempt->mutable_end_time() = ToProto(Now());
    }
    registry_.ReleaseAttempt(attempt->attempt_id());
  }
  runtime_.erase(job_id);
  std::vector<v1::JobEvent> events;
  if (Transition(job, state, reason, message, Now(), &events).ok()) CommitOrLog(std::move(job), std::move(events));
}

void Coordinator::TearDown(const std::string& job_id, v1::FailureReason reason, const std::string& message) {
  v1::Job job = jobs_[job_id];
  if (!HasLiveAttempt(job.state())) return;
  if (job.state() == v1::JOB_STATE_CANCELLING) {
    Finish(job_id, v1::JOB_STATE_CANCELLED, v1::FAILURE_REASON_CANCELLED,
           "cancelled; the gang failed before its final checkpoint: " + message);
    return;
  }
  v1::Attempt* attempt = MutableCurrentAttempt(job);
  const StoredCheckpoint* kept = catalog_.NewestGood(job_id);
  attempt->set_end_reason(message);
  *attempt->mutable_end_time() = ToProto(Now());
  const int64_t at_risk = TokensAtRisk(job, kept ? kept->info.tokens() : 0);
  registry_.ReleaseAttempt(attempt->attempt_id());
  runtime_.erase(job_id);
  std::vector<v1::JobEvent> events;
  absl::Status st;
  if (job.restarts() >= job.spec().max_restarts()) {
    st = Transition(job, v1::JOB_STATE_FAILED, reason,
                    absl::StrFormat("%s; no restarts left (max_restarts %d)", message, job.spec().max_restarts()),
                    Now(), &events);
  } else {
    job.set_restarts(job.restarts() + 1);
    if (metrics_) metrics_->JobRestarted(reason);
    absl::Duration backoff = options_.restart_backoff_initial;
    for (int i = 1; i < job.restarts() && backoff < options_.restart_backoff_max; ++i) backoff *= 2;
    backoff = std::min(backoff, options_.restart_backoff_max);
    *job.mutable_not_before() = ToProto(Now() + backoff);
    st = Transition(job, v1::JOB_STATE_RESTARTING, reason,
                    absl::StrFormat("%s; restart %d of %d in %s from %s (about %d tokens of attempt %d to recompute)",
                                    message, job.restarts(), job.spec().max_restarts(), absl::FormatDuration(backoff),
                                    kept ? absl::StrCat("the checkpoint at step ", kept->info.step()) : "scratch",
                                    at_risk, attempt->number()),
                    Now(), &events);
  }
  if (st.ok()) CommitOrLog(std::move(job), std::move(events));
}

absl::Status Coordinator::StartAttempt(v1::Job& job, const std::vector<WorkerRecord*>& gang) {
  v1::Attempt attempt;
  attempt.set_number(job.attempts_size() + 1);
  attempt.set_attempt_id(absl::StrCat(job.job_id(), "-", attempt.number()));
  for (WorkerRecord* w : gang) attempt.add_worker_ids(w->worker_id);
  WorkerRecord& leader = *gang[0];
  const auto& caps = leader.capabilities;
  const int64_t range = caps.rendezvous_port_max() - caps.rendezvous_port_min() + 1;
  attempt.set_rendezvous(absl::StrCat(caps.host(), ":", caps.rendezvous_port_min() + leader.ports_handed_out % range));
  const StoredCheckpoint* resume = catalog_.NewestGood(job.job_id());
  attempt.set_resumed_from_step(resume ? resume->info.step() : 0);
  attempt.set_last_step(attempt.resumed_from_step());
  *attempt.mutable_start_time() = ToProto(Now());
  v1::Job updated = job;
  OpenAttemptBooks(updated, attempt, resume ? resume->info.tokens() : 0);
  *updated.add_attempts() = attempt;
  std::vector<std::string> names;
  for (WorkerRecord* w : gang) names.push_back(w->worker_id);
  std::vector<v1::JobEvent> events;
  auto st = Transition(updated, v1::JOB_STATE_STARTING, v1::FAILURE_REASON_UNSPECIFIED,
                       absl::StrFormat("attempt %d: ranks 0..%d on %s; %s", attempt.number(), gang.size() - 1,
                                       absl::StrJoin(names, ", "),
                                       resume ? absl::StrFormat("resuming from the checkpoint at step %d (%d tokens)",
                                                                resume->info.step(), resume->info.tokens())
                                              : "starting from scratch"),
                       Now(), &events);
  if (!st.ok()) return st;
  if (auto st = Commit(updated, std::move(events)); !st.ok()) return st;
  ++leader.ports_handed_out;
  if (metrics_) {
    const v1::Job& j = jobs_[job.job_id()];
    const absl::Time waited_since = j.restarts() > 0 ? FromProto(j.not_before()) : FromProto(j.create_time());
    metrics_->JobScheduled(absl::ToDoubleSeconds(Now() - waited_since));
  }
  AttemptRuntime rt;
  rt.rank_running.assign(gang.size(), false);
  rt.rank_done.assign(gang.size(), false);
  // A gang whose ranks never all report running is torn down like a lost one.
  rt.reconnect_deadline = Now() + options_.reconnect_grace;
  runtime_[job.job_id()] = rt;
  for (size_t r = 0; r < gang.size(); ++r) {
    gang[r]->slot = RankSlot{job.job_id(), attempt.attempt_id(), static_cast<int>(r), false};
  }
  return absl::OkStatus();
}

void Coordinator::Schedule() {
  if (!health().ok()) return;  // nothing new starts on a coordinator that cannot record it
  std::vector<SchedulableJob> pending;
  for (const auto& [id, job] : jobs_) {
    if (job.state() != v1::JOB_STATE_PENDING) continue;
    const JobShape& shape = shapes_[id];
    if (shape.total_steps == 0) continue;  // a job this version cannot run
    pending.push_back({id, job.spec().priority(), shape.device, shape.gang_size, shape.memory_per_rank});
  }
  if (pending.empty()) return;
  std::vector<SchedulableWorker> workers;
  for (const auto& [id, w] : registry_.workers()) {
    workers.push_back({id, w.capabilities.device_kind(), w.capabilities.gpu_count(), w.capabilities.memory_bytes(),
                       w.state == WorkerState::kConnected, w.Idle()});
  }
  const SchedulePlan plan = PlanSchedule(std::move(pending), workers);
  for (const Placement& p : plan.placements) {
    std::vector<WorkerRecord*> gang;
    for (const auto& id : p.worker_ids) gang.push_back(registry_.Find(id));
    if (auto st = StartAttempt(jobs_[p.job_id], gang); !st.ok()) {
      std::fprintf(stderr, "saegrid-coordinator: cannot start %s: %s\n", p.job_id.c_str(),
                   std::string(st.message()).c_str());
      return;
    }
  }
  for (const auto& [id, reason] : plan.pending_reasons) {
    if (jobs_[id].pending_reason() == reason) continue;
    v1::Job updated = jobs_[id];
    updated.set_pending_reason(reason);
    CommitOrLog(std::move(updated), {});
  }
}

void Coordinator::Tick() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = Now();
  // Workers that missed their heartbeat deadline take their gangs down.
  for (WorkerRecord* w : registry_.ExpireSilent(now, started_ + options_.reconnect_grace)) {
    if (metrics_) metrics_->HeartbeatMissed();
    if (!w->slot) continue;
    const RankSlot slot = *w->slot;
    w->slot.reset();
    TearDown(slot.job_id, v1::FAILURE_REASON_WORKER_LOST,
             absl::StrFormat("worker %s (rank %d) missed its heartbeat deadline (%s)", w->Describe(), slot.rank,
                             absl::FormatDuration(options_.heartbeat_timeout)));
  }
  std::vector<std::string> ids;
  for (const auto& [id, job] : jobs_) {
    if (!IsTerminal(job.state())) ids.push_back(id);
  }
  for (const auto& id : ids) {
    v1::Job job = jobs_[id];
    if (job.spec().deadline_seconds() > 0 &&
        now > FromProto(job.create_time()) + absl::Seconds(job.spec().deadline_seconds())) {
      Finish(id, v1::JOB_STATE_FAILED, v1::FAILURE_REASON_DEADLINE_EXCEEDED,
             absl::StrFormat("deadline of %d s after submission passed", job.spec().deadline_seconds()));
      continue;
    }
    if (job.state() == v1::JOB_STATE_RESTARTING && now >= FromProto(job.not_before())) {
      std::vector<v1::JobEvent> events;
      if (Transition(job, v1::JOB_STATE_PENDING, v1::FAILURE_REASON_UNSPECIFIED,
                     absl::StrCat("waiting for a new gang (restart ", job.restarts(), ")"), now, &events)
              .ok()) {
        CommitOrLog(std::move(job), std::move(events));
      }
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
                               CurrentAttempt(job)->number(), absl::FormatDuration(options_.reconnect_grace)));
    }
  }
  Schedule();
  if (metrics_) {
    std::map<std::string, const v1::Evaluation*> evaluations;
    for (const auto& [id, e] : evaluations_) evaluations[id] = &e;
    metrics_->Refresh(jobs_, registry_.CountByState(), evaluations, now);
  }
}

}  // namespace saegrid::coordinator
