// The control plane end to end with real processes on loopback: saegrid-coordinator (SQLite in
// its data directory), saegrid-worker daemons running `saegrid-train` ranks, and clients over
// gRPC (generated C++ stubs, the saegrid CLI, and a Python client generated from the .proto
// files alone).
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "formats/checkpoint_archive.h"
#include "rpc/security.h"
#include "rpc/sha256.h"
#include "spec/job_spec_loader.h"
#include "saegrid/v1/rank_event.pb.h"
#include "tests/http_client.h"
#include "tests/service_cluster.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;
using testing::ServiceCluster;

using testing::Terminal;

// Submits through the CLI (as a user would) and returns the job id.
std::string SubmitWithCli(ServiceCluster& cluster, const std::string& spec_yaml, const std::string& name,
                          const std::vector<std::string>& extra = {}) {
  const std::string spec = cluster.dir() / (name + ".yaml");
  testing::WriteFile(spec, spec_yaml);
  std::vector<std::string> argv = {SAEGRID_BINARY, "submit", spec, "--json"};
  for (const auto& f : cluster.CliFlags()) argv.push_back(f);
  argv.insert(argv.end(), extra.begin(), extra.end());
  const std::string out = cluster.dir() / (name + ".submit.out");
  const int code = testing::RunProcess(argv, out, 60);
  EXPECT_EQ(code, 0) << testing::ReadFile(out);
  auto j = nlohmann::json::parse(testing::ReadLines(out).at(0), nullptr, false);
  return j.is_object() ? j["job"]["job_id"].get<std::string>() : "";
}

int RunCli(ServiceCluster& cluster, std::vector<std::string> args, const std::string& log) {
  args.insert(args.begin(), SAEGRID_BINARY);
  for (const auto& f : cluster.CliFlags()) args.push_back(f);
  return testing::RunProcess(args, log, 120);
}

std::vector<v1::JobEvent> Events(ServiceCluster& cluster, const std::string& job_id) {
  v1::ListJobEventsRequest request;
  request.set_job_id(job_id);
  v1::ListJobEventsResponse response;
  EXPECT_TRUE(cluster.jobs().ListJobEvents(cluster.Context().get(), request, &response).ok());
  return {response.events().begin(), response.events().end()};
}

TEST(Service, SubmitWatchDownloadAndEvaluate) {
  ServiceCluster cluster;
  const std::string spec = testing::SmallJobSpec(/*shards=*/2, /*steps=*/150, /*every=*/50, /*d=*/128, /*latents=*/2048);
  const std::string job_id = SubmitWithCli(cluster, spec, "job");
  ASSERT_FALSE(job_id.empty());

  // WatchJob: the current state first, then transitions with increasing revisions, to the end.
  v1::WatchJobRequest watch;
  watch.set_job_id(job_id);
  watch.set_progress_interval_seconds(0.2);
  auto ctx = cluster.Context();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(240));
  auto reader = cluster.jobs().WatchJob(ctx.get(), watch);
  v1::JobUpdate update;
  std::vector<v1::JobState> transitions;
  int64_t revision = -1;
  int updates = 0, progress_updates = 0;
  v1::JobState first_state = v1::JOB_STATE_UNSPECIFIED;
  while (reader->Read(&update)) {
    EXPECT_GT(update.revision(), revision);
    revision = update.revision();
    if (updates++ == 0) {
      EXPECT_FALSE(update.has_event()) << "the first update is the current job";
      first_state = update.job().state();
    }
    if (update.has_event() && update.event().from_state() != update.event().to_state()) {
      transitions.push_back(update.event().to_state());
    }
    if (!update.has_event() && update.job().progress().step() > 0) ++progress_updates;
  }
  ASSERT_TRUE(reader->Finish().ok());
  // The job may have moved on before the watch began: what the watch saw is a suffix of the
  // lifecycle, and the event history holds all of it.
  const std::vector<v1::JobState> lifecycle = {v1::JOB_STATE_PENDING, v1::JOB_STATE_STARTING, v1::JOB_STATE_RUNNING,
                                               v1::JOB_STATE_SUCCEEDED};
  std::vector<v1::JobState> seen = {first_state};
  seen.insert(seen.end(), transitions.begin(), transitions.end());
  ASSERT_LE(seen.size(), lifecycle.size()) << cluster.Logs();
  EXPECT_TRUE(std::equal(seen.begin(), seen.end(), lifecycle.end() - seen.size())) << cluster.Logs();
  std::vector<v1::JobState> history;
  for (const auto& e : Events(cluster, job_id)) {
    if (e.from_state() != e.to_state()) history.push_back(e.to_state());
  }
  EXPECT_EQ(history, lifecycle);
  EXPECT_GT(progress_updates, 0);
  const v1::Job job = cluster.GetJob(job_id);
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.message() << cluster.Logs();
  EXPECT_EQ(job.progress().step(), 150);
  EXPECT_EQ(job.tokens_consumed(), 150 * 256);
  EXPECT_EQ(job.latest_checkpoint_step(), 150);

  // Checkpoints every 50 steps, the last final; download the newest with the CLI.
  const v1::ListCheckpointsResponse list = cluster.Checkpoints(job_id);
  std::vector<int64_t> steps;
  for (const auto& c : list.checkpoints()) steps.push_back(c.step());
  EXPECT_THAT(steps, ::testing::ElementsAre(50, 100, 150));
  ASSERT_EQ(list.checkpoints_size(), 3);
  EXPECT_TRUE(list.checkpoints(2).final());
  EXPECT_TRUE(list.checkpoints(2).has_evaluation());
  const std::string download = cluster.dir() / "download/checkpoints";
  ASSERT_EQ(RunCli(cluster, {"download", job_id, "-o", download, "--keep-archive"}, cluster.dir() / "download.log"), 0)
      << testing::ReadFile(cluster.dir() / "download.log");
  const std::string archive = absl::StrFormat("%s/%s-step_%09d.tar", download, job_id, 150);
  auto digest = rpc::Sha256OfFile(archive);
  ASSERT_TRUE(digest.ok());
  EXPECT_EQ(*digest, list.checkpoints(2).sha256());
  EXPECT_TRUE(std::filesystem::exists(download + "/step_000000150/sparsify/sae/sae.safetensors"));

  // The evaluation over gRPC, and the downloaded checkpoint loads and evaluates to the same FVU:
  // `saegrid train` resumes it at its final step and only evaluates.
  const v1::Evaluation evaluation = cluster.Evaluation(job_id);
  EXPECT_EQ(evaluation.step(), 150);
  EXPECT_GT(evaluation.fvu(), 0);
  EXPECT_LT(evaluation.fvu(), 1);
  std::filesystem::remove(archive);
  const std::string local_spec = cluster.dir() / "local.yaml";
  testing::WriteFile(local_spec, testing::SmallJobSpec(1, 150, 50, 128, 2048));
  const std::string metrics = cluster.dir() / "local.jsonl";
  ASSERT_EQ(testing::RunProcess({SAEGRID_BINARY, "train", "--config", local_spec, "--output-dir",
                                 cluster.dir() / "download", "--metrics-jsonl", metrics, "--quiet"},
                                cluster.dir() / "local.log", 120),
            0)
      << testing::ReadFile(cluster.dir() / "local.log");
  double local_fvu = -1;
  for (const auto& line : testing::ReadLines(metrics)) {
    v1::RankEvent event;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(line, &event).ok()) << line;
    EXPECT_FALSE(event.has_step()) << "no training step expected: " << line;
    if (event.has_evaluation()) local_fvu = event.evaluation().fvu();
  }
  EXPECT_NEAR(local_fvu, evaluation.fvu(), 1e-6 * std::max(1.0, evaluation.fvu()));

  // Human output of the CLI.
  ASSERT_EQ(RunCli(cluster, {"results", job_id}, cluster.dir() / "results.log"), 0);
  EXPECT_THAT(testing::ReadFile(cluster.dir() / "results.log"), HasSubstr("fvu"));
  ASSERT_EQ(RunCli(cluster, {"get", job_id, "--events"}, cluster.dir() / "get.log"), 0);
  EXPECT_THAT(testing::ReadFile(cluster.dir() / "get.log"), HasSubstr("SUCCEEDED"));
}

TEST(Service, IdempotentSubmitPaginationAndPendingReason) {
  testing::ClusterOptions options;
  options.workers = 0;  // nothing runs: jobs stay PENDING with a reason
  ServiceCluster cluster(options);
  v1::SubmitJobRequest request;
  request.set_request_id("request-1");
  request.mutable_spec()->set_name("first");
  (*request.mutable_spec()->mutable_labels())["team"] = "a";
  request.mutable_spec()->mutable_data()->mutable_synthetic()->set_d(32);
  request.mutable_spec()->mutable_training()->set_total_tokens(4096);
  request.mutable_spec()->mutable_parallelism()->set_shards(2);
  request.mutable_spec()->mutable_model()->set_num_latents(256);
  v1::SubmitJobResponse first, again;
  ASSERT_TRUE(cluster.jobs().SubmitJob(cluster.Context().get(), request, &first).ok());
  EXPECT_TRUE(first.created());
  ASSERT_TRUE(cluster.jobs().SubmitJob(cluster.Context().get(), request, &again).ok());
  EXPECT_FALSE(again.created());
  EXPECT_EQ(again.job().job_id(), first.job().job_id());
  v1::SubmitJobRequest changed = request;
  changed.mutable_spec()->set_name("other");
  grpc::Status status = cluster.jobs().SubmitJob(cluster.Context().get(), changed, &again);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(status.error_message(), HasSubstr("request-1"));

  const v1::Job pending = cluster.WaitFor(first.job().job_id(), [](const v1::Job& j) { return !j.pending_reason().empty(); }, 10);
  EXPECT_EQ(pending.state(), v1::JOB_STATE_PENDING);
  EXPECT_THAT(pending.pending_reason(), HasSubstr("needs 2 cpu workers, 0 idle of 0 suitable"));

  std::set<std::string> ids = {first.job().job_id()};
  for (int i = 0; i < 6; ++i) {
    request.set_request_id(absl::StrCat("request-more-", i));
    (*request.mutable_spec()->mutable_labels())["team"] = i % 2 ? "a" : "b";
    v1::SubmitJobResponse r;
    ASSERT_TRUE(cluster.jobs().SubmitJob(cluster.Context().get(), request, &r).ok());
    ids.insert(r.job().job_id());
  }
  ASSERT_EQ(ids.size(), 7u);
  // Pages of 3: 3 + 3 + 1, newest first, every job exactly once.
  v1::ListJobsRequest lr;
  lr.set_page_size(3);
  std::vector<std::string> seen;
  int pages = 0;
  do {
    v1::ListJobsResponse page;
    ASSERT_TRUE(cluster.jobs().ListJobs(cluster.Context().get(), lr, &page).ok());
    ++pages;
    for (const auto& j : page.jobs()) seen.push_back(j.job_id());
    lr.set_page_token(page.next_page_token());
  } while (!lr.page_token().empty());
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()), ids);
  EXPECT_TRUE(std::is_sorted(seen.rbegin(), seen.rend()));
  // Filters: label team=a holds the first job and 3 more; state RUNNING holds none.
  v1::ListJobsRequest by_label;
  (*by_label.mutable_labels())["team"] = "a";
  v1::ListJobsResponse labelled;
  ASSERT_TRUE(cluster.jobs().ListJobs(cluster.Context().get(), by_label, &labelled).ok());
  EXPECT_EQ(labelled.jobs_size(), 4);
  v1::ListJobsRequest by_state;
  by_state.add_states(v1::JOB_STATE_RUNNING);
  v1::ListJobsResponse running;
  ASSERT_TRUE(cluster.jobs().ListJobs(cluster.Context().get(), by_state, &running).ok());
  EXPECT_EQ(running.jobs_size(), 0);
  // Cancelling a pending job ends it at once.
  v1::CancelJobRequest cancel;
  cancel.set_job_id(first.job().job_id());
  v1::Job cancelled;
  ASSERT_TRUE(cluster.jobs().CancelJob(cluster.Context().get(), cancel, &cancelled).ok());
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
}

TEST(Service, BadRequestsGetTheRightStatusCodes) {
  testing::ClusterOptions options;
  options.workers = 0;
  options.health_port = testing::FreeLoopbackPort();
  ServiceCluster cluster(options);
  v1::SubmitJobRequest bad;
  bad.set_request_id("bad");
  bad.mutable_spec()->mutable_data()->mutable_synthetic();
  bad.mutable_spec()->mutable_training()->set_total_tokens(1000);
  bad.mutable_spec()->mutable_model()->set_k(-3);
  v1::SubmitJobResponse response;
  grpc::Status status = cluster.jobs().SubmitJob(cluster.Context().get(), bad, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("model.k"));
  bad.mutable_spec()->mutable_model()->set_k(8);
  bad.mutable_spec()->set_max_restarts(1000);
  status = cluster.jobs().SubmitJob(cluster.Context().get(), bad, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("max_restarts"));
  bad.set_request_id("");
  status = cluster.jobs().SubmitJob(cluster.Context().get(), bad, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("request_id"));

  // Bytes that are not a GetJobRequest: INVALID_ARGUMENT saying so, not an empty INTERNAL.
  {
    grpc::ClientContext raw;
    raw.AddMetadata("authorization", "Bearer " + cluster.client_token());
    const std::string garbage = "\xff\xff\xff\xff\x0f\x0a\x80";
    grpc::Slice slice(garbage);
    grpc::ByteBuffer request_buffer(&slice, 1), response_buffer;
    grpc::GenericStub generic(cluster.channel());
    grpc::CompletionQueue cq;
    auto call = generic.PrepareUnaryCall(&raw, "/saegrid.v1.JobService/GetJob", request_buffer, &cq);
    call->StartCall();
    grpc::Status malformed;
    call->Finish(&response_buffer, &malformed, reinterpret_cast<void*>(1));
    void* tag;
    bool ok;
    ASSERT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(malformed.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << malformed.error_message();
    EXPECT_THAT(malformed.error_message(), HasSubstr("malformed protobuf"));
  }
  // A 1 MiB job id is not echoed back whole.
  v1::GetJobRequest long_id;
  long_id.set_job_id(std::string(1 << 20, 'x'));
  v1::Job long_job;
  status = cluster.jobs().GetJob(cluster.Context().get(), long_id, &long_job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_LT(status.error_message().size(), 300u);
  // NaN passes no range check.
  v1::CancelJobRequest nan_cancel;
  nan_cancel.set_job_id("job-000001");
  nan_cancel.set_grace_seconds(std::nan(""));
  v1::Job nan_job;
  EXPECT_EQ(cluster.jobs().CancelJob(cluster.Context().get(), nan_cancel, &nan_job).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  {
    v1::WatchJobRequest watch;
    watch.set_job_id("job-000001");
    watch.set_progress_interval_seconds(std::nan(""));
    auto wctx = cluster.Context();
    auto reader = cluster.jobs().WatchJob(wctx.get(), watch);
    v1::JobUpdate update;
    while (reader->Read(&update)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }

  // Oversized: a 5 MiB label value is refused by the transport's limit.
  v1::SubmitJobRequest huge = bad;
  huge.set_request_id("huge");
  (*huge.mutable_spec()->mutable_labels())["x"] = std::string(5 << 20, 'a');
  status = cluster.jobs().SubmitJob(cluster.Context().get(), huge, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();

  v1::GetJobRequest get;
  get.set_job_id("job-999999");
  v1::Job job;
  status = cluster.jobs().GetJob(cluster.Context().get(), get, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("job-999999"));
  v1::ListJobsRequest list;
  list.set_page_size(100000);
  v1::ListJobsResponse jobs;
  EXPECT_EQ(cluster.jobs().ListJobs(cluster.Context().get(), list, &jobs).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // Tokens: none, wrong, and the other role's.
  status = cluster.jobs().GetJob(cluster.Context("").get(), get, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  status = cluster.jobs().GetJob(cluster.Context("wrong").get(), get, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  status = cluster.jobs().GetJob(cluster.Context(cluster.worker_token()).get(), get, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), HasSubstr("worker token"));
  auto workers = cluster.WorkerStub();
  v1::RegisterWorkerRequest reg;
  reg.set_worker_id("intruder");
  v1::RegisterWorkerResponse reg_response;
  status = workers->RegisterWorker(cluster.Context().get(), reg, &reg_response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), HasSubstr("client token"));
  // A worker with bad capabilities is told which field.
  status = workers->RegisterWorker(cluster.Context(cluster.worker_token()).get(), reg, &reg_response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("capabilities.device_kind"));

  // A pending job has no evaluation or checkpoint; a cancelled one cannot be cancelled again.
  bad.set_request_id("good");
  bad.mutable_spec()->set_max_restarts(1);
  ASSERT_TRUE(cluster.jobs().SubmitJob(cluster.Context().get(), bad, &response).ok());
  v1::GetEvaluationRequest er;
  er.set_job_id(response.job().job_id());
  v1::Evaluation evaluation;
  EXPECT_EQ(cluster.jobs().GetEvaluation(cluster.Context().get(), er, &evaluation).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  v1::DownloadCheckpointRequest dr;
  dr.set_job_id(response.job().job_id());
  auto dctx = cluster.Context();
  auto reader = cluster.jobs().DownloadCheckpoint(dctx.get(), dr);
  v1::CheckpointChunk chunk;
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  v1::CancelJobRequest cancel;
  cancel.set_job_id(response.job().job_id());
  ASSERT_TRUE(cluster.jobs().CancelJob(cluster.Context().get(), cancel, &job).ok());
  EXPECT_EQ(cluster.jobs().CancelJob(cluster.Context().get(), cancel, &job).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  // Health: liveness and readiness are SERVING, on the API port and on the plaintext health port
  // (what Kubernetes probes); an unknown name is NOT_FOUND.
  for (const std::string& address : {cluster.address(), absl::StrCat("127.0.0.1:", options.health_port)})
  for (const std::string name : {"liveness", "readiness", "unknown"}) {
    auto health = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
    grpc::ClientContext hctx;
    grpc::ByteBuffer request_buffer, response_buffer;
    // grpc.health.v1.HealthCheckRequest{service = name}: field 1, length-delimited.
    std::string bytes = std::string(1, '\x0a') + static_cast<char>(name.size()) + name;
    grpc::Slice slice(bytes);
    request_buffer = grpc::ByteBuffer(&slice, 1);
    grpc::GenericStub generic(health);
    grpc::CompletionQueue cq;
    auto call = generic.PrepareUnaryCall(&hctx, "/grpc.health.v1.Health/Check", request_buffer, &cq);
    call->StartCall();
    grpc::Status hs;
    call->Finish(&response_buffer, &hs, reinterpret_cast<void*>(1));
    void* tag;
    bool ok;
    ASSERT_TRUE(cq.Next(&tag, &ok));
    if (name == "unknown") {
      EXPECT_EQ(hs.error_code(), grpc::StatusCode::NOT_FOUND);
    } else {
      ASSERT_TRUE(hs.ok()) << name << ": " << hs.error_message();
      std::vector<grpc::Slice> slices;
      ASSERT_TRUE(response_buffer.Dump(&slices).ok());
      // HealthCheckResponse{status = SERVING (1)}: 08 01.
      ASSERT_EQ(slices.size(), 1u);
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(slices[0].begin()), slices[0].size()), std::string("\x08\x01", 2));
    }
  }
}

TEST(Service, CancelMidRunEndsCancelledWithAFinalCheckpoint) {
  ServiceCluster cluster;
  const std::string job_id = SubmitWithCli(cluster, testing::SmallJobSpec(2, 4000, 0, 128, 2048), "long");
  const v1::Job running = cluster.WaitFor(job_id, [](const v1::Job& j) { return j.progress().step() >= 10 || Terminal(j); }, 120);
  ASSERT_EQ(running.state(), v1::JOB_STATE_RUNNING) << running.message() << cluster.Logs();
  v1::CancelJobRequest cancel;
  cancel.set_job_id(job_id);
  cancel.set_grace_seconds(60);
  v1::Job cancelling;
  ASSERT_TRUE(cluster.jobs().CancelJob(cluster.Context().get(), cancel, &cancelling).ok());
  EXPECT_EQ(cancelling.state(), v1::JOB_STATE_CANCELLING);
  const v1::Job done = cluster.WaitFor(job_id, Terminal, 120);
  ASSERT_EQ(done.state(), v1::JOB_STATE_CANCELLED) << done.message() << cluster.Logs();
  EXPECT_THAT(done.message(), HasSubstr("final checkpoint at step"));
  const v1::ListCheckpointsResponse list = cluster.Checkpoints(job_id);
  ASSERT_EQ(list.checkpoints_size(), 1);  // every_steps 0: only the final one
  EXPECT_TRUE(list.checkpoints(0).final());
  EXPECT_GE(list.checkpoints(0).step(), 10);
  EXPECT_LT(list.checkpoints(0).step(), 4000);
  // Both workers are free again: a new job runs.
  const std::string next = SubmitWithCli(cluster, testing::SmallJobSpec(2, 10, 0), "next");
  EXPECT_EQ(cluster.WaitFor(next, Terminal, 120).state(), v1::JOB_STATE_SUCCEEDED) << cluster.Logs();
}

TEST(Service, KilledWorkerRestartsTheJobFromItsLastCheckpoint) {
  testing::ClusterOptions options;
  options.workers = 3;
  ServiceCluster cluster(options);
  const int steps = 600;
  const std::string job_id = SubmitWithCli(cluster, testing::SmallJobSpec(2, steps, 50, 128, 2048), "restart");
  const v1::Job before = cluster.WaitFor(
      job_id, [](const v1::Job& j) { return (j.latest_checkpoint_step() >= 50 && j.progress().step() >= 70) || Terminal(j); },
      180);
  ASSERT_EQ(before.state(), v1::JOB_STATE_RUNNING) << before.message() << cluster.Logs();
  const int victim = cluster.WorkerOfRank(before, 1);
  ASSERT_GT(victim, 0);
  cluster.KillWorker(victim, SIGKILL);
  const v1::Job done = cluster.WaitFor(job_id, Terminal, 300);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.message() << cluster.Logs();
  ASSERT_GE(done.attempts_size(), 2);
  EXPECT_GE(done.restarts(), 1);
  const auto& first = done.attempts(0);
  const auto& second = done.attempts(1);
  EXPECT_FALSE(first.end_reason().empty());
  EXPECT_GE(second.resumed_from_step(), 50);
  EXPECT_EQ(second.start_tokens(), second.resumed_from_step() * 256);
  for (const auto& id : second.worker_ids()) EXPECT_NE(id, absl::StrCat("worker-", victim));
  // History accounts for every token trained: per attempt (last - start), and the part of the
  // first attempt after its last checkpoint counted as lost.
  int64_t consumed = 0;
  for (const auto& a : done.attempts()) consumed += a.last_tokens() - a.start_tokens();
  EXPECT_EQ(done.tokens_consumed(), consumed);
  EXPECT_EQ(done.attempts(done.attempts_size() - 1).last_tokens(), int64_t{steps} * 256);
  // At least the whole run: a kill right after a checkpoint loses nothing, since a checkpoint step
  // is a reporting step and the last reported step can be the checkpoint's.
  EXPECT_GE(done.tokens_consumed(), int64_t{steps} * 256);
  EXPECT_GE(first.lost_tokens(), 0);
  EXPECT_EQ(first.lost_tokens(), first.last_tokens() - second.start_tokens());
  bool restart_event = false;
  for (const auto& e : Events(cluster, job_id)) {
    if (e.to_state() == v1::JOB_STATE_RESTARTING) {
      restart_event = true;
      EXPECT_THAT(e.message(), HasSubstr("from the checkpoint at step"));
    }
  }
  EXPECT_TRUE(restart_event);
}

TEST(Service, CoordinatorKilledMidRunLosesNothing) {
  ServiceCluster cluster;
  const int steps = 500;
  const std::string job_id = SubmitWithCli(cluster, testing::SmallJobSpec(2, steps, 50, 128, 2048), "survive");
  const v1::Job before = cluster.WaitFor(
      job_id, [](const v1::Job& j) { return j.latest_checkpoint_step() >= 50 || Terminal(j); }, 180);
  ASSERT_EQ(before.state(), v1::JOB_STATE_RUNNING) << before.message() << cluster.Logs();
  const auto events_before = Events(cluster, job_id);
  cluster.KillCoordinator(SIGKILL);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  cluster.StartCoordinator();
  const v1::Job done = cluster.WaitFor(job_id, Terminal, 300);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.message() << cluster.Logs();
  std::string history;
  for (const auto& e : Events(cluster, job_id)) history += e.message() + "\n";
  EXPECT_EQ(done.attempts_size(), 1) << "the gang should keep running across the restart:\n" << history << cluster.Logs();
  EXPECT_EQ(done.progress().step(), steps);
  const auto events_after = Events(cluster, job_id);
  ASSERT_GE(events_after.size(), events_before.size());
  for (size_t i = 0; i < events_before.size(); ++i) {
    EXPECT_EQ(events_after[i].sequence(), events_before[i].sequence());
    EXPECT_EQ(events_after[i].message(), events_before[i].message());
  }
  const v1::ListCheckpointsResponse list = cluster.Checkpoints(job_id);
  EXPECT_EQ(list.checkpoints(list.checkpoints_size() - 1).step(), steps);
  EXPECT_GE(list.checkpoints_size(), steps / 50);
}

// The newest checkpoint is corrupted while the job waits to restart: the new gang cannot restore
// it, the coordinator marks it bad, and the next gang resumes from the one before.
TEST(Service, CheckpointThatFailsToRestoreIsMarkedBadAndThePreviousOneUsed) {
  testing::ClusterOptions options;
  options.restart_backoff = 3;  // time to corrupt the file while the job is RESTARTING
  ServiceCluster cluster(options);
  const std::string job_id = SubmitWithCli(cluster, testing::SmallJobSpec(2, 600, 50, 128, 2048), "corrupt");
  const v1::Job before = cluster.WaitFor(
      job_id, [](const v1::Job& j) { return j.latest_checkpoint_step() >= 100 || Terminal(j); }, 180);
  ASSERT_EQ(before.state(), v1::JOB_STATE_RUNNING) << before.message() << cluster.Logs();
  cluster.KillWorker(cluster.WorkerOfRank(before, 0), SIGKILL);
  cluster.StartWorker(cluster.WorkerOfRank(before, 0));  // the same name comes back
  const v1::Job restarting =
      cluster.WaitFor(job_id, [](const v1::Job& j) { return j.state() != v1::JOB_STATE_RUNNING; }, 60);
  ASSERT_EQ(restarting.state(), v1::JOB_STATE_RESTARTING) << restarting.message() << cluster.Logs();
  const v1::ListCheckpointsResponse list = cluster.Checkpoints(job_id);
  ASSERT_GE(list.checkpoints_size(), 2);
  const int64_t corrupted = list.checkpoints(list.checkpoints_size() - 1).step();
  const int64_t previous = list.checkpoints(list.checkpoints_size() - 2).step();
  const std::string file =
      absl::StrFormat("%s/checkpoints/%s/step_%09d.tar", cluster.dir() / "coordinator", job_id, corrupted);
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good()) << file;
    f.seekp(4096);
    f.write("corrupted!", 10);
  }
  const v1::Job done = cluster.WaitFor(job_id, Terminal, 300);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.message() << cluster.Logs();
  ASSERT_GE(done.attempts_size(), 3);
  EXPECT_EQ(done.attempts(1).resumed_from_step(), corrupted);
  EXPECT_EQ(done.attempts(2).resumed_from_step(), previous);
  // (Attempt 3 trains past the corrupted step again and stores a good checkpoint there, so the
  // bad mark shows in the history rather than in the final list.)
  bool reason = false;
  for (const auto& e : Events(cluster, job_id)) {
    if (e.reason() == v1::FAILURE_REASON_CHECKPOINT_RESTORE) {
      reason = true;
      EXPECT_THAT(e.message(), HasSubstr(absl::StrCat("checkpoint at step ", corrupted, " (marked bad)")));
    }
  }
  EXPECT_TRUE(reason);
}

// SIGTERM to a worker: its rank writes a final checkpoint, and the job resumes from exactly there
// on another gang without losing a token.
TEST(Service, WorkerShutdownCheckpointsAndTheJobResumesFromThere) {
  testing::ClusterOptions options;
  options.workers = 3;
  ServiceCluster cluster(options);
  const std::string job_id = SubmitWithCli(cluster, testing::SmallJobSpec(2, 600, 250, 128, 2048), "drain");
  const v1::Job before =
      cluster.WaitFor(job_id, [](const v1::Job& j) { return j.progress().step() >= 30 || Terminal(j); }, 180);
  ASSERT_EQ(before.state(), v1::JOB_STATE_RUNNING) << before.message() << cluster.Logs();
  cluster.KillWorker(cluster.WorkerOfRank(before, 1), SIGTERM);
  const v1::Job done = cluster.WaitFor(job_id, Terminal, 300);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.message() << cluster.Logs();
  ASSERT_EQ(done.attempts_size(), 2);
  const int64_t resumed = done.attempts(1).resumed_from_step();
  EXPECT_GE(resumed, 30) << cluster.Logs();
  EXPECT_NE(resumed % 250, 0) << "resumed from the shutdown checkpoint, not a periodic one";
  EXPECT_EQ(done.attempts(0).lost_tokens(), 0);
  EXPECT_EQ(done.tokens_consumed(), 600 * 256);
  EXPECT_EQ(done.failure_reason(), v1::FAILURE_REASON_UNSPECIFIED);
  bool restart_reason = false;
  for (const auto& e : Events(cluster, job_id)) {
    if (e.to_state() == v1::JOB_STATE_RESTARTING) {
      restart_reason = e.reason() == v1::FAILURE_REASON_WORKER_LOST;
      EXPECT_THAT(e.message(), HasSubstr("the gang stopped at step"));
    }
  }
  EXPECT_TRUE(restart_reason);
}

// The worker API driven by hand, as a misbehaving worker would: uploads with a wrong checksum,
// wrong size or no header are refused with the right codes, and so is an archive that is not a
// checkpoint of the job; a second worker holding the shared worker token can neither take the
// first one's id nor report for its rank; a good upload and result finish the job.
TEST(Service, WorkerProtocolRefusesBadUploadsAndForgeriesAndFinishesOnResult) {
  testing::ClusterOptions options;
  options.workers = 0;
  ServiceCluster cluster(options);
  // Real checkpoints of the job below (steps 1 and 2), made by the trainer as a rank would.
  const std::string spec_yaml = "data: {synthetic: {d: 32}}\ntraining: {total_tokens: 8192}\n";
  testing::WriteFile(cluster.dir() / "local.yaml",
                     spec_yaml + "checkpoint: {every_steps: 1, keep_last: 0}\nresources: {num_threads: 1}\n");
  ASSERT_EQ(testing::RunProcess({SAEGRID_BINARY, "train", "--config", cluster.dir() / "local.yaml", "--output-dir",
                                 cluster.dir() / "local", "--quiet"},
                                cluster.dir() / "local.log", 300),
            0)
      << testing::ReadFile(cluster.dir() / "local.log");
  std::map<int, std::string> archives;
  for (int step : {1, 2}) {
    archives[step] = cluster.dir() / absl::StrFormat("step_%d.tar", step);
    ASSERT_TRUE(PackDirectory(cluster.dir() / absl::StrFormat("local/checkpoints/step_%09d", step), archives[step]).ok());
  }

  auto workers = cluster.WorkerStub();
  const std::string token = cluster.worker_token();
  auto registration = [&](const std::string& id, const std::string& session) {
    v1::RegisterWorkerRequest reg;
    reg.set_worker_id(id);
    reg.set_session(session);
    reg.mutable_capabilities()->set_device_kind("cpu");
    reg.mutable_capabilities()->set_host("127.0.0.1");
    reg.mutable_capabilities()->set_rendezvous_port_min(40000);
    reg.mutable_capabilities()->set_rendezvous_port_max(40000);
    return reg;
  };
  v1::RegisterWorkerResponse registered;
  ASSERT_TRUE(workers->RegisterWorker(cluster.Context(token).get(), registration("hand", ""), &registered).ok());
  EXPECT_GT(registered.heartbeat_interval_seconds(), 0);
  ASSERT_FALSE(registered.session().empty());

  auto submit = ParseJobSpec(spec_yaml, "test");
  ASSERT_TRUE(submit.ok());
  v1::SubmitJobRequest request;
  request.set_request_id("by-hand");
  *request.mutable_spec() = *submit;
  v1::SubmitJobResponse submitted;
  ASSERT_TRUE(cluster.jobs().SubmitJob(cluster.Context().get(), request, &submitted).ok());
  const std::string job_id = submitted.job().job_id();

  auto hctx = cluster.Context(token);
  auto stream = workers->Heartbeat(hctx.get());
  v1::WorkerHeartbeat beat;
  beat.set_worker_id("hand");
  beat.set_session(registered.session());
  v1::WorkerCommands commands;
  v1::Assignment assignment;
  for (int i = 0; i < 50 && assignment.attempt_id().empty(); ++i) {
    ASSERT_TRUE(stream->Write(beat));
    ASSERT_TRUE(stream->Read(&commands));
    if (commands.start_size() > 0) assignment = commands.start(0);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_FALSE(assignment.attempt_id().empty());
  EXPECT_EQ(assignment.job_id(), job_id);
  EXPECT_EQ(assignment.world_size(), 1);
  EXPECT_EQ(assignment.rendezvous(), "127.0.0.1:40000");
  EXPECT_EQ(assignment.rank_credential().size(), 64u);
  auto* running = beat.add_running();
  running->set_job_id(job_id);
  running->set_attempt_id(assignment.attempt_id());
  ASSERT_TRUE(stream->Write(beat));
  ASSERT_TRUE(stream->Read(&commands));
  EXPECT_EQ(commands.start_size(), 0) << "an assignment the worker runs is not sent again";
  EXPECT_EQ(cluster.GetJob(job_id).state(), v1::JOB_STATE_RUNNING);

  // An intruder with the worker token: it cannot take the live worker's id...
  v1::RegisterWorkerResponse stolen;
  EXPECT_EQ(workers->RegisterWorker(cluster.Context(token).get(), registration("hand", ""), &stolen).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  // ...and under its own id it cannot report for the job's rank.
  ASSERT_TRUE(workers->RegisterWorker(cluster.Context(token).get(), registration("intruder", ""), &stolen).ok());
  v1::ReportResultRequest forged;
  forged.set_worker_id("intruder");
  forged.set_job_id(job_id);
  forged.set_attempt_id(assignment.attempt_id());
  forged.set_outcome(v1::RANK_OUTCOME_SUCCEEDED);
  forged.set_final_step(2);
  forged.set_final_tokens(8192);
  v1::ReportResultResponse reported;
  EXPECT_EQ(workers->ReportResult(cluster.Context(token).get(), forged, &reported).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  forged.set_rank_credential(assignment.rank_credential());  // even with the credential, not from its id
  EXPECT_EQ(workers->ReportResult(cluster.Context(token).get(), forged, &reported).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(cluster.GetJob(job_id).state(), v1::JOB_STATE_RUNNING);

  auto upload = [&](const std::string& worker, const std::string& credential, int step, int64_t size,
                    const std::string& digest, const std::string& data, v1::UploadCheckpointResponse* response,
                    bool header = true) {
    auto ctx = cluster.Context(token);
    auto writer = workers->UploadCheckpoint(ctx.get(), response);
    v1::UploadCheckpointChunk chunk;
    if (header) {
      auto* h = chunk.mutable_header();
      h->set_worker_id(worker);
      h->set_job_id(job_id);
      h->set_attempt_id(assignment.attempt_id());
      h->set_rank_credential(credential);
      h->set_step(step);
      h->set_tokens(4096 * step);
      h->set_size_bytes(size);
      h->set_sha256(digest);
      h->set_final(step == 2);
      writer->Write(chunk);
    }
    for (size_t at = 0; at < data.size(); at += rpc::kChunkBytes) {
      chunk.set_data(data.substr(at, rpc::kChunkBytes));
      writer->Write(chunk);
    }
    writer->WritesDone();
    return writer->Finish();
  };
  auto sha = [](const std::string& bytes) {
    rpc::Sha256 hash;
    hash.Update(bytes);
    return hash.HexDigest();
  };
  const std::string credential = assignment.rank_credential();
  const std::string junk = "not really a tar archive, but bytes with a checksum";
  const std::string real = testing::ReadFile(archives[1]);
  v1::UploadCheckpointResponse uploaded;
  EXPECT_EQ(upload("hand", credential, 1, junk.size(), std::string(64, '0'), junk, &uploaded).error_code(),
            grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(upload("hand", credential, 1, junk.size() - 1, sha(junk), junk, &uploaded).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(upload("hand", credential, 1, junk.size() + 5, sha(junk), junk, &uploaded).error_code(),
            grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(upload("hand", credential, 1, 0, "", junk, &uploaded, /*header=*/false).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(upload("hand", credential, 1, junk.size(), "short", junk, &uploaded).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  const grpc::Status not_archive = upload("hand", credential, 1, junk.size(), sha(junk), junk, &uploaded);
  EXPECT_EQ(not_archive.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(not_archive.error_message(), HasSubstr("not a valid checkpoint archive"));
  EXPECT_EQ(upload("intruder", credential, 1, real.size(), sha(real), real, &uploaded).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(upload("hand", std::string(64, 'f'), 1, real.size(), sha(real), real, &uploaded).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(upload("hand", credential, 2, real.size(), sha(real), real, &uploaded).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT)
      << "the step-1 archive claimed as step 2";
  const v1::ListCheckpointsResponse list = cluster.Checkpoints(job_id);
  EXPECT_EQ(list.checkpoints_size(), 0) << "no refused upload is stored";
  ASSERT_TRUE(upload("hand", credential, 1, real.size(), sha(real), real, &uploaded).ok());
  EXPECT_EQ(uploaded.checkpoint().sha256(), sha(real));

  // Downloads resume at an offset; an offset past the end is OUT_OF_RANGE.
  v1::DownloadCheckpointRequest dr;
  dr.set_job_id(job_id);
  dr.set_offset(10);
  auto dctx = cluster.Context();
  auto reader = cluster.jobs().DownloadCheckpoint(dctx.get(), dr);
  v1::CheckpointChunk chunk;
  std::string tail;
  bool first = true;
  while (reader->Read(&chunk)) {
    if (first) {
      EXPECT_EQ(chunk.info().size_bytes(), static_cast<int64_t>(real.size()));
      EXPECT_EQ(chunk.info().sha256(), sha(real));
      first = false;
    }
    tail += chunk.data();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(tail, real.substr(10));
  dr.set_offset(real.size() + 1);
  auto octx = cluster.Context();
  auto past = cluster.jobs().DownloadCheckpoint(octx.get(), dr);
  while (past->Read(&chunk)) {
  }
  EXPECT_EQ(past->Finish().error_code(), grpc::StatusCode::OUT_OF_RANGE);

  v1::ReportProgressRequest stale;
  stale.set_worker_id("hand");
  stale.set_job_id(job_id);
  stale.set_attempt_id("job-000001-99");
  v1::ReportProgressResponse progressed;
  EXPECT_EQ(workers->ReportProgress(cluster.Context(token).get(), stale, &progressed).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::ReportProgressRequest bad = stale;
  bad.set_attempt_id(assignment.attempt_id());
  bad.set_rank_credential(credential);
  bad.mutable_progress()->set_step(-5);
  bad.mutable_progress()->set_tokens(-1);
  bad.mutable_progress()->set_fvu(std::nan(""));
  EXPECT_EQ(workers->ReportProgress(cluster.Context(token).get(), bad, &progressed).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  const std::string final_archive = testing::ReadFile(archives[2]);
  ASSERT_TRUE(upload("hand", credential, 2, final_archive.size(), sha(final_archive), final_archive, &uploaded).ok());
  v1::ReportResultRequest result;
  result.set_worker_id("hand");
  result.set_job_id(job_id);
  result.set_attempt_id(assignment.attempt_id());
  result.set_rank(0);
  result.set_rank_credential(credential);
  result.set_outcome(v1::RANK_OUTCOME_SUCCEEDED);
  result.set_final_step(2);
  result.set_final_tokens(8192);
  result.mutable_evaluation()->set_fvu(0.25);
  result.mutable_evaluation()->set_mse(0.01);
  result.mutable_evaluation()->set_l0(32);
  result.mutable_evaluation()->set_dead_fraction(0.125);
  result.set_evaluation_json(R"({"fvu": 0.25, "mse": 0.01, "l0": 32, "dead_fraction": 0.125})");
  ASSERT_TRUE(workers->ReportResult(cluster.Context(token).get(), result, &reported).ok());
  const v1::Job done = cluster.GetJob(job_id);
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.message();
  EXPECT_EQ(done.tokens_consumed(), 8192);
  const v1::Evaluation evaluation = cluster.Evaluation(job_id);
  EXPECT_DOUBLE_EQ(evaluation.fvu(), 0.25);
  EXPECT_DOUBLE_EQ(evaluation.dead_fraction(), 0.125);
  stream->WritesDone();
  hctx->TryCancel();
}

// TLS end to end: coordinator with a certificate, workers and client trusting it; a plaintext
// client cannot talk to it.
TEST(Service, TlsJobRunsAndPlaintextIsRefused) {
  testing::ClusterOptions options;
  options.tls = true;
  ServiceCluster cluster(options);
  const std::string job_id = SubmitWithCli(cluster, testing::SmallJobSpec(2, 20, 0), "tls");
  ASSERT_FALSE(job_id.empty());
  EXPECT_EQ(cluster.WaitFor(job_id, Terminal, 120).state(), v1::JOB_STATE_SUCCEEDED) << cluster.Logs();
  auto plain = v1::JobService::NewStub(grpc::CreateChannel(cluster.address(), grpc::InsecureChannelCredentials()));
  v1::GetJobRequest get;
  get.set_job_id(job_id);
  v1::Job job;
  EXPECT_EQ(plain->GetJob(cluster.Context().get(), get, &job).error_code(), grpc::StatusCode::UNAVAILABLE);
}

// Priority before submission order; a pending job says what it waits for; deadlines fail jobs
// that cannot finish in time; placement honours the memory a job asks for.
TEST(Service, SchedulingOrderReasonsAndDeadlines) {
  testing::ClusterOptions options;
  options.workers = 0;
  ServiceCluster cluster(options);
  const std::string low = SubmitWithCli(cluster, testing::SmallJobSpec(1, 300, 0, 128, 2048), "low");
  const std::string high =
      SubmitWithCli(cluster, "priority: 5\n" + testing::SmallJobSpec(1, 300, 0, 128, 2048), "high");
  const std::string huge = SubmitWithCli(
      cluster, "resources: {min_memory_bytes: 1000000000000000}\n" + testing::SmallJobSpec(1, 10, 0), "huge");
  const std::string late =
      SubmitWithCli(cluster, "deadline_seconds: 10\n" + testing::SmallJobSpec(1, 3000, 0, 128, 2048), "late");
  cluster.StartWorker(1);
  // high runs first; low waits for the worker; late queues behind low; huge fits no worker and
  // holds up nobody.
  const v1::Job queued = cluster.WaitFor(
      late, [](const v1::Job& j) { return absl::StrContains(j.pending_reason(), "queued behind"); }, 8);
  EXPECT_THAT(queued.pending_reason(), HasSubstr("queued behind " + low)) << cluster.Logs();
  EXPECT_THAT(cluster.GetJob(low).pending_reason(), HasSubstr("needs 1 cpu workers, 0 idle of 1 suitable"));
  EXPECT_THAT(cluster.GetJob(huge).pending_reason(),
              HasSubstr("needs 1 cpu workers with 1000000.0 GB, 0 idle of 0 suitable"));
  EXPECT_EQ(cluster.WaitFor(high, Terminal, 120).state(), v1::JOB_STATE_SUCCEEDED) << cluster.Logs();
  EXPECT_EQ(cluster.WaitFor(low, Terminal, 120).state(), v1::JOB_STATE_SUCCEEDED) << cluster.Logs();
  auto started = [&](const std::string& id) {
    for (const auto& e : Events(cluster, id)) {
      if (e.to_state() == v1::JOB_STATE_STARTING) return e.sequence();
    }
    return int64_t{-1};
  };
  EXPECT_LT(started(high), started(low));
  const v1::Job expired = cluster.WaitFor(late, Terminal, 60);
  EXPECT_EQ(expired.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(expired.failure_reason(), v1::FAILURE_REASON_DEADLINE_EXCEEDED);
  EXPECT_EQ(cluster.GetJob(huge).state(), v1::JOB_STATE_PENDING);
}

// A rank that refuses its configuration (exit 2: data.path missing on the worker) fails the job
// once, with the rank's message; retrying a deterministic failure would only repeat it.
TEST(Service, AConfigErrorOnTheWorkerFailsTheJobWithoutRetries) {
  testing::ClusterOptions options;
  options.workers = 1;
  ServiceCluster cluster(options);
  const std::string job_id = SubmitWithCli(
      cluster, "max_restarts: 3\nmodel: {d_in: 16, num_latents: 64, k: 4}\ndata: {path: /nonexistent/activations}\n"
               "training: {total_tokens: 4096}\n", "missing-data");
  const v1::Job done = cluster.WaitFor(job_id, Terminal, 120);
  EXPECT_EQ(done.state(), v1::JOB_STATE_FAILED) << cluster.Logs();
  EXPECT_EQ(done.failure_reason(), v1::FAILURE_REASON_INVALID_CONFIG);
  EXPECT_EQ(done.restarts(), 0);
  EXPECT_EQ(done.attempts_size(), 1);
  EXPECT_THAT(done.message(), HasSubstr("not retried"));
  EXPECT_THAT(done.message(), HasSubstr("/nonexistent/activations"));
  EXPECT_THAT(done.message(), ::testing::Not(HasSubstr("OpenBLAS")));
}

// A guessable token is refused at startup; running without tokens is loud about it.
TEST(Service, ShortTokensAreRefusedAndUnauthenticatedModeWarns) {
  testing::TempDir dir;
  testing::WriteFile(dir / "short.token", "x\n");
  testing::WriteFile(dir / "worker.token", "a-long-enough-worker-token\n");
  const std::string log = dir / "coordinator.log";
  EXPECT_EQ(testing::RunProcess({SAEGRID_COORDINATOR_BINARY, "--listen", "127.0.0.1:0", "--data-dir", dir / "data",
                                 "--client-token-file", dir / "short.token", "--worker-token-file",
                                 dir / "worker.token", "--metrics-listen", "off"},
                                log, 30),
            2);
  EXPECT_THAT(testing::ReadFile(log), HasSubstr("client token has 1 characters; use at least 16"));
  const pid_t open = testing::StartProcess({SAEGRID_COORDINATOR_BINARY, "--listen", "127.0.0.1:0", "--data-dir",
                                            dir / "data", "--allow-unauthenticated", "--metrics-listen", "off",
                                            "--port-file", dir / "port"},
                                           log);
  for (int i = 0; i < 100 && !std::filesystem::exists(dir / "port"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(open, SIGTERM);
  testing::WaitProcess(open, 20);
  EXPECT_THAT(testing::ReadFile(log), HasSubstr("WARNING: --allow-unauthenticated"));
}

// The client's exit codes are stable for scripts.
TEST(Service, CliExitCodes) {
  testing::ClusterOptions options;
  options.workers = 0;
  ServiceCluster cluster(options);
  const std::string log = cluster.dir() / "cli.log";
  EXPECT_EQ(RunCli(cluster, {"get", "job-000777"}, log), 4) << testing::ReadFile(log);
  EXPECT_THAT(testing::ReadFile(log), HasSubstr("job-000777"));
  testing::WriteFile(cluster.dir() / "wrong.token", "nope\n");
  EXPECT_EQ(testing::RunProcess({SAEGRID_BINARY, "list", "--coordinator", cluster.address(), "--token-file",
                                 cluster.dir() / "wrong.token"},
                                log, 60),
            5);
  EXPECT_EQ(testing::RunProcess({SAEGRID_BINARY, "list", "--coordinator", "127.0.0.1:1"}, log, 60), 3);
  testing::WriteFile(cluster.dir() / "bad.yaml", "model: {kk: 3}\n");
  EXPECT_EQ(RunCli(cluster, {"submit", cluster.dir() / "bad.yaml"}, log), 2);
  EXPECT_THAT(testing::ReadFile(log), HasSubstr("model.kk"));
  EXPECT_EQ(RunCli(cluster, {"list", "--state", "bogus"}, log), 2);
  EXPECT_EQ(RunCli(cluster, {"list"}, log), 0);
}

// A client generated from the .proto files alone (Python, protoc + grpc_python_plugin).
TEST(Service, PythonClientFromProtoFilesAlone) {
  testing::ClusterOptions options;
  options.workers = 0;
  ServiceCluster cluster(options);
  const std::string out = cluster.dir() / "python.log";
  const int code = testing::RunProcess(
      {"/usr/bin/python3", std::string(SAEGRID_SOURCE_DIR) + "/tests/python_client_check.py", SAEGRID_SOURCE_DIR,
       cluster.address(), cluster.client_token(), cluster.dir() / "pyout"},
      out, 120);
  EXPECT_EQ(code, 0) << testing::ReadFile(out);
  EXPECT_THAT(testing::ReadFile(out), HasSubstr("python client: ok"));
}

// The example text with its model and tokens at `tiny` and `total_tokens` replaced.
std::string ExampleWith(const std::string& example, const std::string& tiny, int64_t total_tokens) {
  std::string text = testing::ReadFile(std::string(SAEGRID_SOURCE_DIR) + "/examples/" + example);
  for (const std::string from : {"out/tiny-gpt2/model", "out/tiny-gpt2/tokens.bin"}) {
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << example << " no longer names " << from;
    if (at != std::string::npos) text.replace(at, from.size(), tiny + from.substr(std::string("out/tiny-gpt2").size()));
  }
  const std::string tokens_line = "total_tokens: 400000";
  const size_t at = text.find(tokens_line);
  EXPECT_NE(at, std::string::npos);
  if (at != std::string::npos) text.replace(at, tokens_line.size(), absl::StrCat("total_tokens: ", total_tokens));
  return text;
}

// examples/lm_on_the_fly.yaml and lm_service.yaml (a GPT-2-style model run on the fly) on the
// model scripts/make-tiny-lm.py writes: locally with `saegrid train`, and through the service as
// two latent shards on two workers, shard 0 broadcasting the activations.
TEST(Service, LanguageModelExampleRunsLocallyAndThroughTheService) {
  ServiceCluster cluster;
  const std::string tiny = cluster.dir() / "tiny-gpt2";
  ASSERT_EQ(testing::RunProcess({std::string(SAEGRID_SOURCE_DIR) + "/scripts/make-tiny-lm.py", tiny},
                                cluster.dir() / "make-tiny-lm.log", 120),
            0)
      << testing::ReadFile(cluster.dir() / "make-tiny-lm.log");
  constexpr int64_t kTokens = 2048 * 8;

  // Locally.
  testing::WriteFile(cluster.dir() / "local.yaml", ExampleWith("lm_on_the_fly.yaml", tiny, kTokens));
  const std::string local = cluster.dir() / "local";
  ASSERT_EQ(testing::RunProcess({SAEGRID_BINARY, "train", "--config", cluster.dir() / "local.yaml", "--output-dir",
                                 local, "--threads", "1"},
                                cluster.dir() / "local.log", 300),
            0)
      << testing::ReadFile(cluster.dir() / "local.log");
  const std::string step = local + "/checkpoints/step_000000008";
  EXPECT_TRUE(std::filesystem::exists(step + "/sparsify/blocks.2.hook_resid_post/sae.safetensors"));
  const auto cfg = nlohmann::json::parse(testing::ReadFile(step + "/saelens/cfg.json"), nullptr, false);
  ASSERT_TRUE(cfg.is_object());
  EXPECT_EQ(cfg["metadata"]["model_name"], "model");
  EXPECT_EQ(cfg["metadata"]["hook_name"], "blocks.2.hook_resid_post");
  EXPECT_EQ(cfg["metadata"]["context_size"], 64);
  const auto local_eval = nlohmann::json::parse(testing::ReadFile(step + "/evaluation.json"), nullptr, false);
  ASSERT_TRUE(local_eval.is_object());
  EXPECT_LT(local_eval["fvu"].get<double>(), 1.0);

  // `saegrid eval` on the local checkpoint: evaluations.json, the top examples and the figures.
  const std::string evals = cluster.dir() / "evals";
  ASSERT_EQ(testing::RunProcess({SAEGRID_BINARY, "eval", "--checkpoint", local, "--config", cluster.dir() / "local.yaml",
                                 "--only", "downstream_loss,top_examples", "--output-dir", evals, "--threads", "1"},
                                cluster.dir() / "eval.log", 300),
            0)
      << testing::ReadFile(cluster.dir() / "eval.log");
  EXPECT_THAT(testing::ReadFile(cluster.dir() / "eval.log"), HasSubstr("eval: downstream_loss"));
  const auto evaluations = nlohmann::json::parse(testing::ReadFile(evals + "/evaluations.json"), nullptr, false);
  ASSERT_TRUE(evaluations.is_object());
  EXPECT_EQ(evaluations["step"], 8);
  // The example's model is random, so the figure itself can lie outside [0, 1]; it must be the
  // ratio of the cross-entropies it is reported with.
  const auto& loss = evaluations["evaluations"]["downstream_loss"];
  const double recovered = loss["loss_recovered"].get<double>();
  EXPECT_TRUE(std::isfinite(recovered));
  EXPECT_NEAR(recovered,
              (loss["ce_zero_ablation"].get<double>() - loss["ce_sae"].get<double>()) /
                  (loss["ce_zero_ablation"].get<double>() - loss["ce_clean"].get<double>()),
              1e-9);
  const auto top = nlohmann::json::parse(testing::ReadFile(evals + "/top_examples.json"), nullptr, false);
  ASSERT_TRUE(top.is_object());
  EXPECT_EQ(top["format"], "saegrid.top_examples.v1");
  EXPECT_GT(top["latents"].size(), 0u);
  for (const char* png : {"density_histogram.png", "l0_fvu.png", "loss_recovered.png"}) {
    EXPECT_EQ(testing::ReadFile(evals + "/" + png).substr(0, 8), "\x89PNG\r\n\x1a\n") << png;
  }
  // A checkpoint whose evaluation.json saegrid did not write costs the figure, not the evaluation.
  const std::string odd = cluster.dir() / "odd/checkpoints/step_000000008";
  std::filesystem::create_directories(odd);
  std::filesystem::copy(step, odd, std::filesystem::copy_options::recursive);
  testing::WriteFile(odd + "/evaluation.json", R"({"density_histogram": 3, "l0": "x", "fvu": 0.5})");
  ASSERT_EQ(testing::RunProcess({SAEGRID_BINARY, "eval", "--checkpoint", odd, "--config", cluster.dir() / "local.yaml",
                                 "--only", "token_stats", "--output-dir", cluster.dir() / "odd-evals", "--threads", "1"},
                                cluster.dir() / "eval-odd.log", 120),
            0)
      << testing::ReadFile(cluster.dir() / "eval-odd.log");
  EXPECT_THAT(testing::ReadFile(cluster.dir() / "eval-odd.log"), HasSubstr("figure skipped: a checkpoint's JSON"));
  EXPECT_TRUE(std::filesystem::exists(cluster.dir() / "odd-evals/evaluations.json"));

  // Bad requests are refused by name, without writing anything.
  ASSERT_EQ(testing::RunProcess({SAEGRID_BINARY, "eval", "--checkpoint", cluster.dir() / "nowhere", "--config",
                                 cluster.dir() / "local.yaml"},
                                cluster.dir() / "eval-missing.log", 60),
            2);
  EXPECT_THAT(testing::ReadFile(cluster.dir() / "eval-missing.log"), HasSubstr("--checkpoint: "));
  ASSERT_EQ(testing::RunProcess({SAEGRID_BINARY, "eval", "--checkpoint", local, "--config", cluster.dir() / "local.yaml",
                                 "--only", "vibes"},
                                cluster.dir() / "eval-unknown.log", 60),
            2);
  EXPECT_THAT(testing::ReadFile(cluster.dir() / "eval-unknown.log"), HasSubstr("unknown evaluation 'vibes'"));

  // Through the service.
  const std::string job_id = SubmitWithCli(cluster, ExampleWith("lm_service.yaml", tiny, kTokens), "lm");
  ASSERT_FALSE(job_id.empty());
  const v1::Job done = cluster.WaitFor(job_id, Terminal, 300);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.message() << cluster.Logs();
  EXPECT_EQ(done.progress().step(), 8);
  const v1::Evaluation evaluation = cluster.Evaluation(job_id);
  EXPECT_GT(evaluation.fvu(), 0);
  EXPECT_LT(evaluation.fvu(), 1.0);
  EXPECT_GT(evaluation.l0(), 0);
  // The example's evaluation.run, typed in GetEvaluation.
  ASSERT_TRUE(evaluation.has_downstream_loss()) << evaluation.evaluation_json();
  EXPECT_TRUE(std::isfinite(evaluation.downstream_loss().loss_recovered()));
  EXPECT_GT(evaluation.downstream_loss().positions(), 0);
  EXPECT_EQ(evaluation.downstream_loss().sequences(), 16);
  ASSERT_TRUE(evaluation.has_ablation_sparsity() && evaluation.has_token_stats() && evaluation.has_n2g() &&
              evaluation.has_top_examples());
  EXPECT_GT(evaluation.ablation_sparsity().samples(), 0);
  EXPECT_EQ(evaluation.n2g().latents(), 8);
  EXPECT_GE(evaluation.token_stats().mean_effective_tokens(), 1.0);
  EXPECT_FALSE(evaluation.has_probes());
}

}  // namespace
}  // namespace saegrid
