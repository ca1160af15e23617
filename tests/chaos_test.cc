// Chaos trials against the real service: a small sharded job with periodic checkpoints, and at a
// random point a kill -9 of a random worker daemon, one of the job's rank processes, or the
// coordinator (just after it acknowledged a burst of submissions). What was killed is restarted.
// Every trial must end with:
//   - the job SUCCEEDED, its final checkpoint downloadable with the SHA-256 the coordinator lists;
//   - trained = final + recomputed, exactly (tokens_consumed = final tokens + sum of lost_tokens),
//     and every attempt's start equal to the tokens of the checkpoint it resumed from;
//   - every job acknowledged before a coordinator kill present after the restart.
// SAEGRID_CHAOS_TRIALS sets the number of trials (default 3, the suite's); SAEGRID_CHAOS_SEED
// the first seed (default: from the clock, printed so that a failure can be replayed).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "rpc/sha256.h"
#include "spec/job_spec_loader.h"
#include "tests/service_cluster.h"

namespace saegrid {
namespace {

using testing::ServiceCluster;
using testing::Terminal;

constexpr int kSteps = 400;
constexpr int kEvery = 40;
constexpr int kBatch = 256;

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

v1::JobSpec ChaosSpec() {
  auto spec = ParseJobSpec(testing::SmallJobSpec(2, kSteps, kEvery, 64, 512), "chaos");
  EXPECT_TRUE(spec.ok()) << spec.status();
  if (!spec.ok()) return {};
  spec->set_max_restarts(20);
  return *spec;
}

std::string Submit(ServiceCluster& cluster, const v1::JobSpec& spec, const std::string& request_id) {
  v1::SubmitJobRequest request;
  request.set_request_id(request_id);
  *request.mutable_spec() = spec;
  v1::SubmitJobResponse response;
  auto ctx = cluster.Context();
  const grpc::Status status = cluster.jobs().SubmitJob(ctx.get(), request, &response);
  return status.ok() ? response.job().job_id() : "";
}

// Downloads the newest checkpoint; returns its SHA-256 and the info the first chunk carried.
std::pair<std::string, v1::CheckpointInfo> Download(ServiceCluster& cluster, const std::string& job_id) {
  v1::DownloadCheckpointRequest request;
  request.set_job_id(job_id);
  auto ctx = cluster.Context();
  auto reader = cluster.jobs().DownloadCheckpoint(ctx.get(), request);
  rpc::Sha256 hash;
  v1::CheckpointInfo info;
  v1::CheckpointChunk chunk;
  int64_t bytes = 0;
  while (reader->Read(&chunk)) {
    if (chunk.has_info()) info = chunk.info();
    hash.Update(chunk.data());
    bytes += static_cast<int64_t>(chunk.data().size());
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(bytes, info.size_bytes());
  return {hash.HexDigest(), info};
}

enum class Victim { kWorker, kRank, kCoordinator };

void RunTrial(uint32_t seed) {
  SCOPED_TRACE(absl::StrCat("chaos seed ", seed));
  std::mt19937 rng(seed);
  testing::ClusterOptions options;
  options.workers = 3;  // a gang of 2 and a spare
  options.heartbeat_timeout = 2;
  options.reconnect_grace = 8;
  options.restart_backoff = 0.3;
  ServiceCluster cluster(options);
  const std::string job_id = Submit(cluster, ChaosSpec(), absl::StrCat("chaos-", seed));
  ASSERT_FALSE(job_id.empty());

  const Victim victim = static_cast<Victim>(std::uniform_int_distribution<int>(0, 2)(rng));
  const int rank = std::uniform_int_distribution<int>(0, 1)(rng);
  // A random moment of the run: progress arrives about once a second, so the kill is timed from
  // the first report rather than aimed at a step.
  const v1::Job running = cluster.WaitFor(
      job_id, [&](const v1::Job& j) { return Terminal(j) || j.progress().step() > 0; }, 180);
  ASSERT_FALSE(Terminal(running)) << running.message();
  std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 3500)(rng)));
  const v1::Job at_kill = cluster.GetJob(job_id);
  if (Terminal(at_kill)) {
    std::fprintf(stderr, "chaos %u: the job ended before the kill (%s); checking it anyway\n", seed,
                 at_kill.message().c_str());
  }
  const std::string attempt = at_kill.attempts(at_kill.attempts_size() - 1).attempt_id();
  std::vector<std::string> acknowledged;
  switch (Terminal(at_kill) ? Victim::kRank : victim) {
    case Victim::kWorker: {
      const int index = cluster.WorkerOfRank(at_kill, rank);
      ASSERT_GT(index, 0);
      std::fprintf(stderr, "chaos %u: kill -9 worker-%d (rank %d) at step %d\n", seed, index, rank,
                   static_cast<int>(at_kill.progress().step()));
      cluster.KillWorker(index);
      std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 3000)(rng)));
      cluster.StartWorker(index);
      break;
    }
    case Victim::kRank:
      std::fprintf(stderr, "chaos %u: kill -9 rank %d of %s at step %d\n", seed, rank, attempt.c_str(),
                   static_cast<int>(at_kill.progress().step()));
      if (!cluster.KillRank(attempt, rank) && !Terminal(at_kill)) {
        std::fprintf(stderr, "chaos %u: rank %d of %s was not running (between attempts)\n", seed, rank,
                     attempt.c_str());
      }
      break;
    case Victim::kCoordinator: {
      // A burst of submissions, then the kill right after the last acknowledgement.
      v1::JobSpec tiny = ChaosSpec();
      tiny.mutable_training()->set_total_tokens(kBatch * 2);
      tiny.mutable_parallelism()->set_shards(1);
      tiny.set_priority(-1);  // after the chaos job
      const int burst = std::uniform_int_distribution<int>(1, 5)(rng);
      for (int i = 0; i < burst; ++i) {
        const std::string id = Submit(cluster, tiny, absl::StrCat("burst-", seed, "-", i));
        if (!id.empty()) acknowledged.push_back(id);
      }
      std::fprintf(stderr, "chaos %u: kill -9 the coordinator at step %d after %zu acknowledged submissions\n", seed,
                   static_cast<int>(at_kill.progress().step()), acknowledged.size());
      cluster.KillCoordinator();
      std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 2000)(rng)));
      cluster.StartCoordinator();
      break;
    }
  }

  const v1::Job done = cluster.WaitFor(job_id, Terminal, 300);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.message() << "\n" << cluster.Logs();
  EXPECT_EQ(done.progress().step(), kSteps);
  EXPECT_EQ(done.progress().tokens(), int64_t{kSteps} * kBatch);
  int64_t recomputed = 0;
  for (const auto& a : done.attempts()) recomputed += a.lost_tokens();
  EXPECT_EQ(done.tokens_consumed(), done.progress().tokens() + recomputed)
      << "trained = final + recomputed; attempts: " << done.attempts_size();
  const v1::ListCheckpointsResponse checkpoints = cluster.Checkpoints(job_id);
  for (const auto& a : done.attempts()) {
    if (a.resumed_from_step() == 0) {
      EXPECT_EQ(a.start_tokens(), 0);
      continue;
    }
    bool found = false;
    for (const auto& c : checkpoints.checkpoints()) {
      if (c.step() == a.resumed_from_step()) {
        found = true;
        EXPECT_EQ(a.start_tokens(), c.tokens()) << a.attempt_id();
      }
    }
    EXPECT_TRUE(found) << a.attempt_id() << " resumed from a checkpoint the coordinator does not list";
  }
  const auto [sha, info] = Download(cluster, job_id);
  EXPECT_EQ(info.step(), kSteps);
  EXPECT_TRUE(info.final());
  EXPECT_EQ(sha, info.sha256()) << "the final checkpoint downloads intact";
  for (const auto& id : acknowledged) {
    const v1::Job j = cluster.GetJob(id);
    EXPECT_EQ(j.job_id(), id) << "acknowledged before the coordinator kill, missing after the restart";
  }
}

TEST(Chaos, KilledWorkersRanksAndCoordinatorsLoseNothing) {
  const int trials = EnvInt("SAEGRID_CHAOS_TRIALS", 3);
  const uint32_t first_seed = static_cast<uint32_t>(
      EnvInt("SAEGRID_CHAOS_SEED", static_cast<int>(std::chrono::system_clock::now().time_since_epoch().count() % 100000)));
  std::fprintf(stderr, "chaos: %d trials from seed %u (SAEGRID_CHAOS_SEED replays them)\n", trials, first_seed);
  for (int t = 0; t < trials; ++t) {
    RunTrial(first_seed + t);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace saegrid
