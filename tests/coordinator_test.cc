// The coordinator's collaborators in-process: the scheduler as a pure function, the worker
// registry, the job state machine, token accounting, rank credentials, and the Coordinator
// itself over a real SQLite store with a manual clock. Checkpoints are real: a tiny job trained
// by the saegrid binary once for the whole suite, packed as the worker would upload them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/attempt_accounting.h"
#include "coordinator/checkpoint_catalog.h"
#include "coordinator/clock.h"
#include "coordinator/coordinator.h"
#include "coordinator/job_lifecycle.h"
#include "coordinator/rank_credentials.h"
#include "coordinator/scheduler.h"
#include "coordinator/worker_registry.h"
#include "formats/checkpoint_archive.h"
#include "rpc/sha256.h"
#include "spec/job_spec_loader.h"
#include "spec/memory_estimate.h"
#include "spec/train_config.h"
#include "tests/process_support.h"

namespace saegrid::coordinator {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::TempDir;

// ---- scheduler ---------------------------------------------------------------------------------

SchedulableWorker Worker(const std::string& id, bool idle = true, int64_t memory = 0) {
  return {id, "cpu", 0, memory, /*connected=*/true, idle};
}

TEST(Scheduler, PriorityThenFifoAndWholeGangsOnly) {
  const std::vector<SchedulableJob> jobs = {{"job-000001", 0, "cpu", 2, 0},
                                            {"job-000002", 5, "cpu", 1, 0},
                                            {"job-000003", 0, "cpu", 1, 0}};
  const SchedulePlan plan = PlanSchedule(jobs, {Worker("w1"), Worker("w2")});
  // job-2 (priority 5) first; job-1 needs 2 and only 1 is left: it waits and keeps job-3 behind it.
  ASSERT_EQ(plan.placements.size(), 1u);
  EXPECT_EQ(plan.placements[0].job_id, "job-000002");
  EXPECT_THAT(plan.pending_reasons.at("job-000001"), HasSubstr("needs 2 cpu workers, 1 idle of 2 suitable"));
  EXPECT_THAT(plan.pending_reasons.at("job-000003"), HasSubstr("queued behind job-000001"));
}

TEST(Scheduler, AJobNoWorkerCanHoldHoldsUpNobody) {
  const std::vector<SchedulableJob> jobs = {{"job-000001", 0, "cpu", 1, int64_t{64} << 30},
                                            {"job-000002", 0, "cpu", 1, int64_t{1} << 30}};
  const SchedulePlan plan = PlanSchedule(jobs, {Worker("w1", true, int64_t{8} << 30)});
  ASSERT_EQ(plan.placements.size(), 1u);
  EXPECT_EQ(plan.placements[0].job_id, "job-000002");
  EXPECT_THAT(plan.pending_reasons.at("job-000001"), HasSubstr("with 68.7 GB, 0 idle of 0 suitable"));
}

TEST(Scheduler, DisconnectedBusyAndOtherDevicesAreNotUsed) {
  std::vector<SchedulableWorker> workers = {Worker("busy", false), Worker("gone"), Worker("gpu")};
  workers[1].connected = false;
  workers[2].device_kind = "cuda";
  workers[2].gpu_count = 1;
  const SchedulePlan plan = PlanSchedule({{"job-000001", 0, "cpu", 1, 0}}, workers);
  EXPECT_TRUE(plan.placements.empty());
  EXPECT_THAT(plan.pending_reasons.at("job-000001"), HasSubstr("0 idle of 1 suitable"));
}

// ---- job lifecycle, accounting, catalog, credentials --------------------------------------------

TEST(JobLifecycle, IllegalTransitionsAreRefusedAndLeaveTheJobAlone) {
  v1::Job job;
  job.set_job_id("job-000001");
  job.set_state(v1::JOB_STATE_SUCCEEDED);
  std::vector<v1::JobEvent> events;
  EXPECT_FALSE(Transition(job, v1::JOB_STATE_RUNNING, v1::FAILURE_REASON_UNSPECIFIED, "x", absl::Now(), &events).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_TRUE(events.empty());
  job.set_state(v1::JOB_STATE_PENDING);
  EXPECT_FALSE(CanTransition(v1::JOB_STATE_PENDING, v1::JOB_STATE_RUNNING));
  ASSERT_TRUE(Transition(job, v1::JOB_STATE_STARTING, v1::FAILURE_REASON_UNSPECIFIED, "go", absl::Now(), &events).ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].from_state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(events[0].to_state(), v1::JOB_STATE_STARTING);
}

TEST(AttemptAccounting, TrainedIsFinalPlusRecomputedAcrossBadCheckpoints) {
  v1::Job job;
  auto start = [&](int64_t from) {
    v1::Attempt a;
    OpenAttemptBooks(job, a, from);
    *job.add_attempts() = a;
  };
  start(0);
  RecordTokensReached(job, 400);  // progress
  RecordTokensReached(job, 300);  // an older report never lowers it
  start(256);                     // resumes from a checkpoint at 256: 144 recomputed
  EXPECT_EQ(job.attempts(0).lost_tokens(), 144);
  RecordTokensReached(job, 256);  // restore failed at once
  start(128);                     // the 256 checkpoint was bad: 128 of it is recomputed too
  EXPECT_EQ(job.attempts(1).lost_tokens(), 128);
  RecordTokensReached(job, 1024);
  EXPECT_EQ(TokensConsumed(job), 400 + 0 + (1024 - 128));
  EXPECT_EQ(job.tokens_consumed(), TokensConsumed(job));
  EXPECT_EQ(TokensConsumed(job), 1024 + TokensRecomputed(job));
}

TEST(CheckpointCatalog, NewestGoodSkipsBadOnes) {
  CheckpointCatalog catalog;
  for (int step : {2, 6, 4}) {
    StoredCheckpoint c;
    c.info.set_job_id("j");
    c.info.set_step(step);
    c.info.set_bad(step == 6);
    catalog.Put(c);
  }
  ASSERT_NE(catalog.NewestGood("j"), nullptr);
  EXPECT_EQ(catalog.NewestGood("j")->info.step(), 4);
  EXPECT_EQ(catalog.List("j").size(), 3u);
  EXPECT_EQ(catalog.List("j")[0].step(), 2);
  EXPECT_EQ(catalog.Find("j", 5), nullptr);
  EXPECT_EQ(catalog.NewestGood("other"), nullptr);
}

TEST(RankCredentials, BoundToAttemptAndRankAndKeptAcrossRestarts) {
  TempDir dir;
  const std::string key = dir / "key";
  auto a = RankCredentials::Open(key);
  ASSERT_TRUE(a.ok()) << a.status();
  const std::string c = (*a)->Issue("job-000001-1", 0);
  EXPECT_TRUE((*a)->Verify("job-000001-1", 0, c));
  EXPECT_FALSE((*a)->Verify("job-000001-1", 1, c));
  EXPECT_FALSE((*a)->Verify("job-000001-2", 0, c));
  EXPECT_FALSE((*a)->Verify("job-000001-1", 0, ""));
  EXPECT_EQ(fs::status(key).permissions() & (fs::perms::group_all | fs::perms::others_all), fs::perms::none);
  auto b = RankCredentials::Open(key);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE((*b)->Verify("job-000001-1", 0, c)) << "a restarted coordinator accepts its running ranks";
  testing::WriteFile(dir / "short", "abc");
  EXPECT_THAT(std::string(RankCredentials::Open(dir / "short").status().message()), HasSubstr("32-byte key"));
}

// ---- worker registry ---------------------------------------------------------------------------

v1::RegisterWorkerRequest Registration(const std::string& id, const std::string& session = "") {
  v1::RegisterWorkerRequest r;
  r.set_worker_id(id);
  r.set_session(session);
  auto* caps = r.mutable_capabilities();
  caps->set_device_kind("cpu");
  caps->set_host("127.0.0.1");
  caps->set_rendezvous_port_min(41000);
  caps->set_rendezvous_port_max(41010);
  caps->set_cpu_cores(2);
  caps->set_memory_bytes(int64_t{16} << 30);
  return r;
}

TEST(WorkerRegistry, RefusesNamesAndCapabilitiesNoWorkerHas) {
  EXPECT_TRUE(WorkerRegistry::Validate(Registration("worker-1.a_b")).ok());
  struct Case {
    std::function<void(v1::RegisterWorkerRequest&)> edit;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](auto& r) { r.set_worker_id(""); }, "worker_id"},
      {[](auto& r) { r.set_worker_id("a/b"); }, "worker_id"},
      {[](auto& r) { r.set_worker_id(std::string(65, 'w')); }, "worker_id"},
      {[](auto& r) { r.set_worker_id("bad\nname"); }, "worker_id"},
      {[](auto& r) { r.mutable_capabilities()->set_host("evil host; rm -rf"); }, "capabilities.host"},
      {[](auto& r) { r.mutable_capabilities()->set_host(""); }, "capabilities.host"},
      {[](auto& r) { r.mutable_capabilities()->set_cpu_cores(-1); }, "capabilities.cpu_cores"},
      {[](auto& r) { r.mutable_capabilities()->set_memory_bytes(-5); }, "capabilities.memory_bytes"},
      {[](auto& r) { r.mutable_capabilities()->set_gpu_count(-2); }, "capabilities.gpu_count"},
      {[](auto& r) { r.mutable_capabilities()->set_device_kind("tpu"); }, "capabilities.device_kind"},
      {[](auto& r) { r.mutable_capabilities()->set_rendezvous_port_max(70000); }, "rendezvous_port"},
  };
  for (const auto& c : cases) {
    auto r = Registration("w");
    c.edit(r);
    const absl::Status st = WorkerRegistry::Validate(r);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.field;
    EXPECT_THAT(std::string(st.message()), HasSubstr(c.field));
  }
}

TEST(WorkerRegistry, ALiveWorkersIdCannotBeTakenOver) {
  WorkerRegistry registry(absl::Seconds(10));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  auto owner = registry.Register(Registration("w"), "session-1", t0);
  ASSERT_TRUE(owner.ok());
  auto thief = registry.Register(Registration("w"), "session-2", t0 + absl::Seconds(1));
  EXPECT_TRUE(absl::IsAlreadyExists(thief.status())) << thief.status();
  EXPECT_EQ(registry.Find("w")->session, "session-1");
  // The owner itself may re-register (its stream broke) by showing its session.
  EXPECT_TRUE(registry.Register(Registration("w", "session-1"), "session-3", t0 + absl::Seconds(2)).ok());
  // A heartbeat with a stale session is refused.
  v1::WorkerHeartbeat beat;
  beat.set_worker_id("w");
  beat.set_session("session-1");
  EXPECT_TRUE(absl::IsFailedPrecondition(registry.Heartbeat(beat, t0 + absl::Seconds(3)).status()));
  beat.set_session("session-3");
  EXPECT_TRUE(registry.Heartbeat(beat, t0 + absl::Seconds(3)).ok());
  // Once its stream closes, or it falls silent, a new process may take the id (a restarted worker).
  registry.StreamClosed("w", "session-other");  // another stream's close changes nothing
  EXPECT_TRUE(absl::IsAlreadyExists(registry.Register(Registration("w"), "s4", t0 + absl::Seconds(4)).status()));
  registry.StreamClosed("w", "session-3");
  EXPECT_TRUE(registry.Register(Registration("w"), "session-4", t0 + absl::Seconds(4)).ok());
  EXPECT_TRUE(registry.Register(Registration("w"), "session-5", t0 + absl::Seconds(60)).ok());
}

// ---- memory estimate ---------------------------------------------------------------------------

// The estimate the coordinator places jobs by, against the peak RSS of the real trainer on the
// same job: within a factor of two either way (it is an estimate, but not a guess).
TEST(MemoryEstimate, WithinAFactorOfTwoOfTheTrainersPeak) {
  TempDir dir;
  const std::string yaml =
      "model: {architecture: topk, num_latents: 16384, k: 32}\n"
      "data:\n"
      "  synthetic: {num_samples: 262144, num_features: 1024, d: 512, seed: 1}\n"
      "  batch_size: 2048\n"
      "training: {total_tokens: 8192}\n"
      "checkpoint: {export_saelens: false}\n"
      "resources: {num_threads: 1}\n";
  testing::WriteFile(dir / "job.yaml", yaml);
  auto spec = ParseJobSpec(yaml, "test");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto config = ToTrainConfig(*spec);
  ASSERT_TRUE(config.ok()) << config.status();
  const MemoryEstimate estimate = EstimateRankMemory(*config);
  const pid_t pid = testing::StartProcess(
      {SAEGRID_TRAIN_BINARY, "--config", dir / "job.yaml", "--output-dir", dir / "out", "--quiet"}, dir / "train.log");
  int status = 0;
  rusage usage{};
  ASSERT_EQ(::wait4(pid, &status, 0, &usage), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << testing::ReadFile(dir / "train.log");
  const double peak = static_cast<double>(usage.ru_maxrss) * 1024;
  const double ratio = peak / static_cast<double>(estimate.total());
  std::fprintf(stderr, "memory estimate %s, trainer peak RSS %.1f MiB, ratio %.2f\n", estimate.ToString().c_str(),
               peak / (1 << 20), ratio);
  EXPECT_GT(ratio, 0.5) << "estimate " << estimate.ToString() << ", peak " << peak / (1 << 20) << " MiB";
  EXPECT_LT(ratio, 2.0) << "estimate " << estimate.ToString() << ", peak " << peak / (1 << 20) << " MiB";
}

// ---- the Coordinator in-process -----------------------------------------------------------------

constexpr int kBatch = 64;
constexpr int kSteps = 8;

std::string TinySpecYaml(int deadline_seconds = 0) {
  return absl::StrFormat(
      "max_restarts: 5\n"
      "deadline_seconds: %d\n"
      "model: {architecture: topk, num_latents: 64, k: 4}\n"
      "data:\n"
      "  synthetic: {num_samples: 4096, num_features: 32, d: 16, seed: 3}\n"
      "  batch_size: %d\n"
      "  block_rows: 64\n"
      "  eval_max_tokens: 256\n"
      "training: {total_tokens: %d}\n"
      "checkpoint: {every_steps: 2, keep_last: 0, export_saelens: false}\n",
      deadline_seconds, kBatch, kBatch * kSteps);
}

v1::JobSpec TinySpec(int deadline_seconds = 0) {
  auto spec = ParseJobSpec(TinySpecYaml(deadline_seconds), "test");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

// Checkpoint archives of the tiny job at steps 2, 4, 6, 8, trained once by the real trainer.
class RealCheckpoints {
 public:
  static const RealCheckpoints& Get() {
    static RealCheckpoints* instance = new RealCheckpoints();
    return *instance;
  }
  std::string Archive(int step) const { return dir_ / absl::StrFormat("step_%09d.tar", step); }

 private:
  RealCheckpoints() {
    testing::WriteFile(dir_ / "job.yaml", TinySpecYaml() + "resources: {num_threads: 1}\n");
    const std::string log = dir_ / "train.log";
    const int code = testing::RunProcess(
        {SAEGRID_BINARY, "train", "--config", dir_ / "job.yaml", "--output-dir", dir_ / "out", "--quiet"}, log, 300);
    EXPECT_EQ(code, 0) << testing::ReadFile(log);
    for (int step = 2; step <= kSteps; step += 2) {
      const std::string name = absl::StrFormat("step_%09d", step);
      auto st = PackDirectory(dir_ / ("out/checkpoints/" + name), Archive(step));
      EXPECT_TRUE(st.ok()) << st;
    }
  }
  TempDir dir_;
};

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }

  void Open() {
    coordinator_.reset();
    CoordinatorOptions options;
    options.data_dir = dir_ / "data";
    options.clock = &clock_;
    options.heartbeat_timeout = absl::Seconds(10);
    options.restart_backoff_initial = absl::Seconds(1);
    options.reconnect_grace = absl::Seconds(30);
    auto c = Coordinator::Open(options);
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator_ = *std::move(c);
  }

  std::string Submit(const v1::JobSpec& spec, const std::string& request_id = "r1") {
    v1::SubmitJobRequest request;
    request.set_request_id(request_id);
    *request.mutable_spec() = spec;
    auto r = coordinator_->SubmitJob(request);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->job().job_id() : "";
  }

  // Registers `id` and returns its session.
  std::string Register(const std::string& id, std::vector<v1::RunningAssignment> running = {}) {
    auto request = Registration(id);
    for (auto& r : running) *request.add_running() = r;
    auto r = coordinator_->RegisterWorker(request);
    EXPECT_TRUE(r.ok()) << r.status();
    sessions_[id] = r.ok() ? r->session() : "";
    return sessions_[id];
  }

  // One heartbeat of `id` saying it runs `running`; returns the commands.
  v1::WorkerCommands Beat(const std::string& id, const std::vector<v1::Assignment>& running = {}) {
    v1::WorkerHeartbeat beat;
    beat.set_worker_id(id);
    beat.set_session(sessions_[id]);
    for (const auto& a : running) {
      auto* r = beat.add_running();
      r->set_job_id(a.job_id());
      r->set_attempt_id(a.attempt_id());
      r->set_rank(a.rank());
    }
    auto c = coordinator_->Heartbeat(beat);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : v1::WorkerCommands();
  }

  // Heartbeats until the worker is told to start something; then reports it running.
  v1::Assignment StartOn(const std::string& id) {
    v1::WorkerCommands commands;
    for (int i = 0; i < 3 && commands.start_size() == 0; ++i) {
      coordinator_->Tick();
      commands = Beat(id);
    }
    EXPECT_EQ(commands.start_size(), 1);
    if (commands.start_size() == 0) return {};
    const v1::Assignment a = commands.start(0);
    Beat(id, {a});
    return a;
  }

  v1::TrainingProgress Progress(int step) {
    v1::TrainingProgress p;
    p.set_step(step);
    p.set_total_steps(kSteps);
    p.set_tokens(int64_t{step} * kBatch);
    p.set_loss(0.5);
    p.set_fvu(0.25);
    p.set_l0(4);
    return p;
  }

  absl::Status ReportProgress(const v1::Assignment& a, int step, const std::string& worker) {
    v1::ReportProgressRequest r;
    r.set_worker_id(worker);
    r.set_job_id(a.job_id());
    r.set_attempt_id(a.attempt_id());
    r.set_rank(a.rank());
    r.set_rank_credential(a.rank_credential());
    *r.mutable_progress() = Progress(step);
    return coordinator_->ReportProgress(r);
  }

  v1::UploadCheckpointHeader Header(const v1::Assignment& a, const std::string& worker, const std::string& archive,
                                    int step) {
    v1::UploadCheckpointHeader h;
    h.set_worker_id(worker);
    h.set_job_id(a.job_id());
    h.set_attempt_id(a.attempt_id());
    h.set_rank(a.rank());
    h.set_rank_credential(a.rank_credential());
    h.set_step(step);
    h.set_tokens(int64_t{step} * kBatch);
    h.set_size_bytes(static_cast<int64_t>(fs::file_size(archive)));
    h.set_sha256(*rpc::Sha256OfFile(archive));
    h.set_final(step == kSteps);
    return h;
  }

  // What the worker service does with an upload: a copy in the temp dir, handed over.
  absl::StatusOr<v1::CheckpointInfo> Upload(const v1::Assignment& a, const std::string& worker, int step,
                                            const std::string& archive = "") {
    const std::string source = archive.empty() ? RealCheckpoints::Get().Archive(step) : archive;
    const v1::UploadCheckpointHeader h = Header(a, worker, source, step);
    if (auto st = coordinator_->CheckUpload(h); !st.ok()) return st;
    const std::string temp = absl::StrCat(coordinator_->temp_dir(), "/upload-", step, ".part");
    fs::copy_file(source, temp, fs::copy_options::overwrite_existing);
    return coordinator_->AddCheckpoint(h, temp);
  }

  absl::Status Result(const v1::Assignment& a, const std::string& worker, v1::RankOutcome outcome, int step) {
    v1::ReportResultRequest r;
    r.set_worker_id(worker);
    r.set_job_id(a.job_id());
    r.set_attempt_id(a.attempt_id());
    r.set_rank(a.rank());
    r.set_rank_credential(a.rank_credential());
    r.set_outcome(outcome);
    r.set_final_step(step);
    r.set_final_tokens(int64_t{step} * kBatch);
    *r.mutable_final_progress() = Progress(step);
    return coordinator_->ReportResult(r);
  }

  v1::Job Job(const std::string& id) { return *coordinator_->GetJob(id); }

  TempDir dir_;
  ManualClock clock_;
  std::unique_ptr<Coordinator> coordinator_;
  std::map<std::string, std::string> sessions_;
};

// Defect: a worker holding the shared token forged another job's checkpoint and result.
TEST_F(CoordinatorTest, OnlyTheAssignedRankWithItsCredentialCanReport) {
  Register("honest");
  const std::string job_id = Submit(TinySpec());
  const v1::Assignment a = StartOn("honest");
  ASSERT_FALSE(a.rank_credential().empty());
  Register("intruder");
  v1::Assignment forged = a;
  forged.set_rank_credential(std::string(64, '0'));
  // The intruder, without the credential or with the honest worker's credential under its own id.
  EXPECT_TRUE(absl::IsPermissionDenied(Result(forged, "intruder", v1::RANK_OUTCOME_SUCCEEDED, kSteps)));
  EXPECT_TRUE(absl::IsPermissionDenied(Result(a, "intruder", v1::RANK_OUTCOME_SUCCEEDED, kSteps)));
  EXPECT_TRUE(absl::IsPermissionDenied(ReportProgress(forged, 3, "honest")));
  EXPECT_TRUE(absl::IsPermissionDenied(Upload(forged, "honest", 2).status()));
  EXPECT_TRUE(absl::IsPermissionDenied(Upload(a, "intruder", 2).status()));
  v1::FetchCheckpointRequest fetch;
  fetch.set_job_id(job_id);
  fetch.set_attempt_id(a.attempt_id());
  fetch.set_step(2);
  EXPECT_TRUE(absl::IsPermissionDenied(coordinator_->AuthorizeFetch(fetch).status()));
  EXPECT_EQ(Job(job_id).state(), v1::JOB_STATE_RUNNING);
  EXPECT_TRUE(coordinator_->ListCheckpoints(job_id)->empty());
  // The assigned rank with its credential is heard.
  EXPECT_TRUE(ReportProgress(a, 3, "honest").ok());
  EXPECT_EQ(Job(job_id).progress().step(), 3);
}

TEST_F(CoordinatorTest, ImpossibleProgressIsRefused) {
  Register("w");
  const std::string job_id = Submit(TinySpec());
  const v1::Assignment a = StartOn("w");
  auto report = [&](std::function<void(v1::TrainingProgress&)> edit) {
    v1::ReportProgressRequest r;
    r.set_worker_id("w");
    r.set_job_id(a.job_id());
    r.set_attempt_id(a.attempt_id());
    r.set_rank_credential(a.rank_credential());
    *r.mutable_progress() = Progress(3);
    edit(*r.mutable_progress());
    return coordinator_->ReportProgress(r);
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const auto& [field, edit] : std::vector<std::pair<std::string, std::function<void(v1::TrainingProgress&)>>>{
           {"progress.step", [](auto& p) { p.set_step(-5); }},
           {"progress.step", [](auto& p) { p.set_step(999999); }},
           {"progress.tokens", [](auto& p) { p.set_tokens(-1); }},
           {"progress.fvu", [&](auto& p) { p.set_fvu(nan); }},
           {"progress.loss", [](auto& p) { p.set_loss(-1); }},
           {"progress.dead_fraction", [](auto& p) { p.set_dead_fraction(2); }},
           {"progress.num_dead", [](auto& p) { p.set_num_dead(-3); }},
           {"progress.l0", [](auto& p) { p.set_l0(std::numeric_limits<double>::infinity()); }}}) {
    const absl::Status st = report(edit);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << field << ": " << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(field));
  }
  EXPECT_EQ(Job(job_id).progress().step(), 0) << "nothing refused was stored";
  EXPECT_EQ(Job(job_id).tokens_consumed(), 0);
}

TEST_F(CoordinatorTest, UploadsMustBeCheckpointsOfTheJobsShape) {
  Register("w");
  const std::string job_id = Submit(TinySpec());
  const v1::Assignment a = StartOn("w");
  const std::string junk = dir_ / "junk.tar";
  testing::WriteFile(junk, std::string(4096, 'x'));
  auto st = Upload(a, "w", 2, junk).status();
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("not a valid checkpoint archive"));
  // A real checkpoint, but of step 4 claimed as step 2.
  st = Upload(a, "w", 2, RealCheckpoints::Get().Archive(4)).status();
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("step"));
  // Past the job's last step, and tokens that do not match the step.
  EXPECT_TRUE(absl::IsInvalidArgument(Upload(a, "w", 999999, RealCheckpoints::Get().Archive(kSteps)).status()));
  v1::UploadCheckpointHeader h = Header(a, "w", RealCheckpoints::Get().Archive(2), 2);
  h.set_tokens(1);
  EXPECT_TRUE(absl::IsInvalidArgument(coordinator_->CheckUpload(h)));
  EXPECT_TRUE(coordinator_->ListCheckpoints(job_id)->empty());
  auto stored = Upload(a, "w", 2);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->tokens(), 2 * kBatch);
}

// Defect: a deadline that passed while the job was STARTING left its rank running.
TEST_F(CoordinatorTest, DeadlineWhileStartingStopsTheRankItHandedOut) {
  Register("w");
  const std::string job_id = Submit(TinySpec(/*deadline_seconds=*/5));
  coordinator_->Tick();
  const v1::WorkerCommands commands = Beat("w");
  ASSERT_EQ(commands.start_size(), 1);
  EXPECT_EQ(Job(job_id).state(), v1::JOB_STATE_STARTING);
  clock_.Advance(absl::Seconds(6));
  coordinator_->Tick();
  EXPECT_EQ(Job(job_id).state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(Job(job_id).failure_reason(), v1::FAILURE_REASON_DEADLINE_EXCEEDED);
  // The worker started the rank meanwhile: its next heartbeat is told to stop it.
  const v1::WorkerCommands after = Beat("w", {commands.start(0)});
  ASSERT_EQ(after.stop_size(), 1);
  EXPECT_EQ(after.stop(0).attempt_id(), commands.start(0).attempt_id());
  EXPECT_FALSE(after.stop(0).final_checkpoint());
  EXPECT_EQ(after.start_size(), 0);
  // Until it stops, the worker is not idle; then the next job can have it.
  EXPECT_EQ(Beat("w", {commands.start(0)}).stop_size(), 1);
  Beat("w");
  const std::string next = Submit(TinySpec(), "r2");
  EXPECT_EQ(StartOn("w").job_id(), next);
}

// Defect: recomputed tokens were measured against the last report, not against the checkpoint
// the next attempt resumed from, and tokens_consumed fell below the final count.
TEST_F(CoordinatorTest, TrainedIsFinalPlusRecomputedThroughLostWorkersAndBadCheckpoints) {
  Register("w1");
  const std::string job_id = Submit(TinySpec());
  v1::Assignment a1 = StartOn("w1");
  ASSERT_TRUE(Upload(a1, "w1", 2).ok());
  ASSERT_TRUE(Upload(a1, "w1", 4).ok());
  ASSERT_TRUE(ReportProgress(a1, 5, "w1").ok());
  // w1 falls silent; a new worker takes over after the backoff.
  clock_.Advance(absl::Seconds(11));
  coordinator_->Tick();
  EXPECT_EQ(Job(job_id).state(), v1::JOB_STATE_RESTARTING);
  clock_.Advance(absl::Seconds(2));
  coordinator_->Tick();
  Register("w2");
  const v1::Assignment a2 = StartOn("w2");
  EXPECT_EQ(a2.resume_from().step(), 4);
  EXPECT_EQ(Job(job_id).attempts(0).lost_tokens(), (5 - 4) * kBatch);
  // Attempt 2 cannot restore step 4: it is marked bad and attempt 3 resumes from step 2.
  ASSERT_TRUE(Result(a2, "w2", v1::RANK_OUTCOME_RESTORE_FAILED, 4).ok());
  EXPECT_EQ(Job(job_id).state(), v1::JOB_STATE_RESTARTING);
  clock_.Advance(absl::Seconds(5));
  coordinator_->Tick();
  const v1::Assignment a3 = StartOn("w2");
  EXPECT_EQ(a3.resume_from().step(), 2);
  EXPECT_EQ(Job(job_id).attempts(1).lost_tokens(), (4 - 2) * kBatch) << "the bad checkpoint's tokens are recomputed";
  for (int step = 3; step <= kSteps; ++step) ASSERT_TRUE(ReportProgress(a3, step, "w2").ok());
  ASSERT_TRUE(Upload(a3, "w2", kSteps).ok());
  ASSERT_TRUE(Result(a3, "w2", v1::RANK_OUTCOME_SUCCEEDED, kSteps).ok());
  const v1::Job done = Job(job_id);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.message();
  int64_t recomputed = 0;
  for (const auto& attempt : done.attempts()) recomputed += attempt.lost_tokens();
  EXPECT_EQ(done.progress().tokens(), kSteps * kBatch);
  EXPECT_EQ(done.tokens_consumed(), done.progress().tokens() + recomputed);
  EXPECT_EQ(done.tokens_consumed(), (5 * kBatch) + 0 + (kSteps - 2) * kBatch);
  // The same books after a restart of the coordinator.
  Open();
  EXPECT_EQ(Job(job_id).tokens_consumed(), done.tokens_consumed());
}

TEST_F(CoordinatorTest, SuccessNeedsTheWholeRunAndItsFinalCheckpoint) {
  Register("w");
  const std::string job_id = Submit(TinySpec());
  const v1::Assignment a = StartOn("w");
  EXPECT_TRUE(absl::IsInvalidArgument(Result(a, "w", v1::RANK_OUTCOME_SUCCEEDED, 999999)));
  EXPECT_TRUE(absl::IsInvalidArgument(Result(a, "w", v1::RANK_OUTCOME_SUCCEEDED, kSteps - 2)));
  EXPECT_EQ(Job(job_id).state(), v1::JOB_STATE_RUNNING);
  // Claimed success without the final checkpoint: the attempt is retried, not trusted.
  ASSERT_TRUE(Result(a, "w", v1::RANK_OUTCOME_SUCCEEDED, kSteps).ok());
  EXPECT_EQ(Job(job_id).state(), v1::JOB_STATE_RESTARTING);
  EXPECT_THAT(Job(job_id).message(), HasSubstr("final checkpoint"));
}

TEST_F(CoordinatorTest, OutOfMemoryAndConfigErrorsAreNotRetried) {
  Register("w");
  for (auto [outcome, reason] : {std::pair{v1::RANK_OUTCOME_OUT_OF_MEMORY, v1::FAILURE_REASON_OUT_OF_MEMORY},
                                 std::pair{v1::RANK_OUTCOME_INVALID_CONFIG, v1::FAILURE_REASON_INVALID_CONFIG}}) {
    const std::string job_id = Submit(TinySpec(), absl::StrCat("r", outcome));
    const v1::Assignment a = StartOn("w");
    ASSERT_TRUE(Result(a, "w", outcome, 0).ok());
    const v1::Job job = Job(job_id);
    EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
    EXPECT_EQ(job.failure_reason(), reason);
    EXPECT_EQ(job.restarts(), 0);
    EXPECT_THAT(job.message(), HasSubstr("not retried"));
  }
}

TEST_F(CoordinatorTest, JobsThatCannotFitAreRefusedOrWaitWithTheReason) {
  // 16 TiB of synthetic data: each field is in range, their product is not.
  v1::JobSpec spec = TinySpec();
  spec.mutable_data()->mutable_synthetic()->set_num_samples(int64_t{1} << 26);
  spec.mutable_data()->mutable_synthetic()->set_d(65536);
  spec.mutable_model()->clear_num_latents();
  v1::SubmitJobRequest request;
  request.set_request_id("huge");
  *request.mutable_spec() = spec;
  const absl::Status st = coordinator_->SubmitJob(request).status();
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("per rank"));
  // Fits a big machine but not this worker (16 GiB): accepted, and waits saying why.
  v1::JobSpec big = TinySpec();
  big.mutable_model()->set_num_latents(1 << 20);
  big.mutable_data()->mutable_synthetic()->set_d(2048);
  Register("w");
  const std::string job_id = Submit(big, "big");
  coordinator_->Tick();
  EXPECT_THAT(Job(job_id).pending_reason(), HasSubstr("0 idle of 0 suitable"));
  EXPECT_THAT(Job(job_id).pending_reason(), HasSubstr("GB"));
  EXPECT_EQ(Beat("w").start_size(), 0);
}

TEST_F(CoordinatorTest, EchoedInputIsBounded) {
  const std::string huge(1 << 20, 'j');
  const absl::Status st = coordinator_->GetJob(huge).status();
  EXPECT_TRUE(absl::IsNotFound(st));
  EXPECT_LT(st.message().size(), 300u);
  auto r = Registration(huge);
  EXPECT_LT(coordinator_->RegisterWorker(r).status().message().size(), 300u);
  for (const auto& edit : std::vector<std::function<void(v1::JobSpec&)>>{
           [&](v1::JobSpec& s) { s.mutable_model()->set_architecture(huge); },
           [&](v1::JobSpec& s) { (*s.mutable_labels())[huge] = "x"; },
           [&](v1::JobSpec& s) { s.mutable_parallelism()->set_device(huge); }}) {
    v1::SubmitJobRequest request;
    request.set_request_id("r");
    *request.mutable_spec() = TinySpec();
    edit(*request.mutable_spec());
    const absl::Status refused = coordinator_->SubmitJob(request).status();
    EXPECT_TRUE(absl::IsInvalidArgument(refused));
    EXPECT_LT(refused.message().size(), 500u);
  }
}

// A failed durable write is sticky: nothing new is acknowledged, health says why.
TEST_F(CoordinatorTest, AStoreFailureStopsAcknowledgingUntilRestart) {
  const std::string first = Submit(TinySpec(), "before");
  coordinator_.reset();
  CoordinatorOptions options;
  options.data_dir = dir_ / "data";
  options.clock = &clock_;
  options.store_busy_timeout = absl::Milliseconds(50);
  auto c = Coordinator::Open(options);
  ASSERT_TRUE(c.ok()) << c.status();
  coordinator_ = *std::move(c);
  // Another connection holds the write lock: the coordinator's next write fails.
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open((dir_ / "data/saegrid.db").c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  v1::SubmitJobRequest request;
  request.set_request_id("during");
  *request.mutable_spec() = TinySpec();
  EXPECT_TRUE(absl::IsUnavailable(coordinator_->SubmitJob(request).status()));
  sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(other);
  request.set_request_id("after");
  const absl::Status after = coordinator_->SubmitJob(request).status();
  EXPECT_TRUE(absl::IsUnavailable(after)) << "sticky: " << after;
  EXPECT_FALSE(coordinator_->health().ok());
  EXPECT_TRUE(absl::IsUnavailable(coordinator_->RegisterWorker(Registration("w")).status()));
  EXPECT_TRUE(coordinator_->GetJob(first).ok()) << "reads still work";
  auto listed = coordinator_->ListJobs(v1::ListJobsRequest());
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->jobs_size(), 1) << "nothing unacknowledged is visible";
  Open();
  EXPECT_TRUE(coordinator_->health().ok());
  EXPECT_EQ(coordinator_->ListJobs(v1::ListJobsRequest())->jobs_size(), 1);
  Submit(TinySpec(), "after-restart");
}

}  // namespace
}  // namespace saegrid::coordinator
