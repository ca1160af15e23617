// Collectives over real processes: tests/communicator_probe ranks join a gang over loopback
// with Gloo and check every collective; rendezvous failures end with an error, never a hang.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "engine/distributed/gang.h"
#include "engine/sharded_selection.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;

std::string Probe() { return SAEGRID_PROBE; }

void RunGang(int shards, int replicas) {
  testing::TempDir dir;
  const int port = FindFreeLoopbackPort();
  ASSERT_GT(port, 0);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < shards * replicas; ++rank) {
    pids.push_back(testing::StartProcess({Probe(), "collectives", std::to_string(port), std::to_string(rank),
                                          std::to_string(shards), std::to_string(replicas)},
                                         dir / ("rank" + std::to_string(rank))));
  }
  for (size_t rank = 0; rank < pids.size(); ++rank) {
    const auto code = testing::WaitProcess(pids[rank], 120);
    ASSERT_TRUE(code.has_value()) << "rank " << rank << " hung";
    EXPECT_EQ(*code, 0) << "rank " << rank << ":\n" << testing::ReadFile(dir / ("rank" + std::to_string(rank)));
  }
}

TEST(GlooCollectives, WorldShardAndReplicaGroupsOfTwoByTwo) { RunGang(2, 2); }
TEST(GlooCollectives, ThreeShards) { RunGang(3, 1); }

TEST(Rendezvous, MissingRankFailsWithinTheTimeout) {
  testing::TempDir dir;
  const int port = FindFreeLoopbackPort();
  const auto start = std::chrono::steady_clock::now();
  const int code = testing::RunProcess({Probe(), "join", std::to_string(port), "0", "2", "1500"}, dir / "log", 60);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(code, 3);
  EXPECT_LT(seconds, 30);
  EXPECT_THAT(testing::ReadFile(dir / "log"), HasSubstr("rendezvous at 127.0.0.1:" + std::to_string(port)));
}

TEST(Rendezvous, DisagreeingWorldSizeIsNamed) {
  testing::TempDir dir;
  const int port = FindFreeLoopbackPort();
  const pid_t leader = testing::StartProcess({Probe(), "join", std::to_string(port), "0", "2", "5000"}, dir / "a");
  const int code = testing::RunProcess({Probe(), "join", std::to_string(port), "1", "3", "5000"}, dir / "b", 60);
  testing::WaitProcess(leader, 60);
  EXPECT_EQ(code, 3);
  EXPECT_THAT(testing::ReadFile(dir / "b"), HasSubstr("rank 1 was started with world size 3 but rank 0 with 2"));
}

TEST(Rendezvous, BadAddressesAreRejected) {
  std::string host;
  int port = 0;
  EXPECT_TRUE(ParseHostPort("node-3:29500", "--rendezvous", &host, &port).ok());
  EXPECT_EQ(host, "node-3");
  EXPECT_EQ(port, 29500);
  for (const char* bad : {"node-3", ":29500", "node:0", "node:70000", "node:abc"}) {
    const auto st = ParseHostPort(bad, "--rendezvous", &host, &port);
    EXPECT_FALSE(st.ok()) << bad;
    EXPECT_THAT(std::string(st.message()), HasSubstr("--rendezvous")) << bad;
  }
}

TEST(NcclCollectives, MatchGlooOnOneGpu) {
  testing::TempDir dir;
  const int code = testing::RunProcess({Probe(), "nccl-vs-gloo", std::to_string(FindFreeLoopbackPort())},
                                       dir / "log", 300);
  if (code == 77) GTEST_SKIP() << testing::ReadFile(dir / "log");
  EXPECT_EQ(code, 0) << testing::ReadFile(dir / "log");
}

// The cut itself, against a brute-force global top-k over the concatenated pre-activations.
TEST(ShardedSelection, ExactCandidatesGiveTheGlobalTopK) {
  torch::manual_seed(3);
  const int64_t batch = 64, shards = 4, per_shard = 32, k = 8;
  const auto pre = torch::randn({batch, shards * per_shard});
  const auto want = std::get<1>(pre.topk(k, 1));
  auto selected = torch::zeros({batch, shards * per_shard}, torch::kBool);
  selected.scatter_(1, want, true);
  const int64_t k_in = CandidatesPerShard(k, shards, per_shard, 2.0, /*exact=*/true);
  ASSERT_EQ(k_in, k);
  const auto top = pre.view({batch, shards, per_shard}).topk(k_in, 2, true, true);
  const auto gathered = std::get<0>(top).permute({1, 0, 2}).contiguous();
  auto got = torch::zeros_like(selected);
  for (int64_t s = 0; s < shards; ++s) {
    const auto cut = CutGlobalTopK(gathered, s, k, false);
    const auto idx = std::get<1>(top).select(1, s) + s * per_shard;
    got.scatter_(1, idx, cut.keep);
  }
  EXPECT_TRUE(torch::equal(got, selected));
}

TEST(ShardedSelection, CapacityAndOverflow) {
  EXPECT_EQ(CandidatesPerShard(32, 2, 1000, 2.0, false), 32);  // S=2, c=2: exact
  EXPECT_EQ(CandidatesPerShard(32, 4, 1000, 2.0, false), 16);
  EXPECT_EQ(CandidatesPerShard(32, 3, 1000, 2.0, false), 22);  // ceil(64 / 3)
  EXPECT_EQ(CandidatesPerShard(32, 64, 1000, 1.0, false), 1);
  EXPECT_EQ(CandidatesPerShard(32, 4, 10, 2.0, true), 10);     // never more than a shard owns
  // k = 2 from 2 shards offering 2 each. Token 0: shard 0 holds both winners, so its lowest
  // offer survives (overflow). Token 1: one winner per shard: no overflow.
  const auto gathered = torch::tensor({9.f, 8.f, 5.f, 4.f, 9.f, 6.f, 8.f, 5.f})
                            .view({2, 2, 2})          // [token][shard][slot]
                            .permute({1, 0, 2})       // [shard][token][slot]
                            .contiguous();
  const auto cut = CutGlobalTopK(gathered, 0, 2, true);
  EXPECT_TRUE(cut.overflow[0].item<bool>());
  EXPECT_FALSE(cut.overflow[1].item<bool>());
  EXPECT_TRUE(torch::equal(cut.keep[0], torch::tensor({true, true})));
  EXPECT_TRUE(torch::equal(cut.keep[1], torch::tensor({true, false})));
  EXPECT_TRUE(torch::equal(CutGlobalTopK(gathered, 1, 2, true).keep[1], torch::tensor({true, false})));
  // Ties go to the lower shard: values {1, 1} on both shards, k = 1.
  const auto ties = torch::ones({2, 1, 1});
  EXPECT_TRUE(CutGlobalTopK(ties, 0, 1, false).keep.item<bool>());
  EXPECT_FALSE(CutGlobalTopK(ties, 1, 1, false).keep.item<bool>());
  // -inf marks an empty slot: never kept even when k asks for more.
  const auto empty = torch::tensor({3.f, -INFINITY}).view({2, 1, 1});
  EXPECT_FALSE(CutGlobalTopK(empty, 1, 2, false).keep.item<bool>());
}

}  // namespace
}  // namespace saegrid
