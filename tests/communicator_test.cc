// Collectives over real processes: tests/communicator_probe ranks join a gang over loopback
// with Gloo and check every collective; rendezvous failures end with an error, never a hang.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/distributed/bound_store.h"
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

// The local addresses of the TCP sockets listening on `port`, as /proc/net/tcp{,6} spells them
// (hex: 0100007F is 127.0.0.1, 00000000 every IPv4 interface).
std::vector<std::string> ListeningAddresses(int port) {
  std::vector<std::string> out;
  const std::string suffix = absl::StrFormat(":%04X", port);
  for (const char* file : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(file);
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state;
      fields >> slot >> local >> remote >> state;
      if (state == "0A" && local.size() > suffix.size() &&
          local.compare(local.size() - suffix.size(), suffix.size(), suffix) == 0) {
        out.push_back(local.substr(0, local.size() - suffix.size()));
      }
    }
  }
  return out;
}

c10::intrusive_ptr<BoundStore> ServeStore(int port = 0, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  auto store = BoundStore::Connect("127.0.0.1", port, /*serve=*/true, timeout);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *store : c10::intrusive_ptr<BoundStore>();
}

c10::intrusive_ptr<BoundStore> ConnectStore(int port, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  auto store = BoundStore::Connect("127.0.0.1", port, /*serve=*/false, timeout);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *store : c10::intrusive_ptr<BoundStore>();
}

std::vector<uint8_t> Bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string String(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

TEST(BoundStore, EveryOperationBetweenTwoConnections) {
  auto server = ServeStore();
  ASSERT_TRUE(server);
  auto client = ConnectStore(server->port());
  ASSERT_TRUE(client);
  server->set("a", Bytes("one"));
  EXPECT_EQ(String(client->get("a")), "one");
  client->set("a", Bytes(std::string("t\0o", 3)));  // values are bytes
  EXPECT_EQ(String(server->get("a")), std::string("t\0o", 3));
  EXPECT_EQ(client->add("n", 2), 2);
  EXPECT_EQ(server->add("n", 5), 7);
  EXPECT_EQ(server->add("n", -10), -3);
  EXPECT_EQ(String(client->get("n")), "-3");  // counters read as decimal text, as in TCPStore
  // compareSet: swaps on a match, else returns the current value; a missing key with an empty
  // expectation is created.
  EXPECT_EQ(String(client->compareSet("c", Bytes(""), Bytes("x"))), "x");
  EXPECT_EQ(String(client->compareSet("c", Bytes("nope"), Bytes("y"))), "x");
  EXPECT_EQ(String(client->compareSet("c", Bytes("x"), Bytes("y"))), "y");
  EXPECT_EQ(String(client->compareSet("missing", Bytes("e"), Bytes("z"))), "e");
  EXPECT_FALSE(server->check({"missing"}));
  EXPECT_TRUE(server->check({"a", "n", "c"}));
  EXPECT_FALSE(server->check({"a", "missing"}));
  EXPECT_EQ(client->getNumKeys(), 3);
  EXPECT_TRUE(client->deleteKey("c"));
  EXPECT_FALSE(client->deleteKey("c"));
  EXPECT_EQ(server->getNumKeys(), 2);
  // Through a PrefixStore, as the process groups use it.
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("group/x", client);
  prefixed->set("k", Bytes("v"));
  EXPECT_EQ(String(server->get("group/x/k")), "v");
}

TEST(BoundStore, GetAndWaitBlockUntilAnotherConnectionSetsTheKey) {
  auto server = ServeStore();
  ASSERT_TRUE(server);
  auto waiter = ConnectStore(server->port());
  auto setter = ConnectStore(server->port());
  ASSERT_TRUE(waiter && setter);
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    setter->set("late", Bytes("here"));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    setter->add("counter", 1);
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(String(waiter->get("late")), "here");
  waiter->wait({"late", "counter"}, std::chrono::seconds(5));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  later.join();
  EXPECT_GE(seconds, 0.45);
  EXPECT_LT(seconds, 3);
}

TEST(BoundStore, TimeoutsThrowAndTheConnectionStaysUsable) {
  auto server = ServeStore(0, std::chrono::milliseconds(300));
  ASSERT_TRUE(server);
  auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(server->get("never"), std::exception);
  EXPECT_THROW(server->wait({"never"}, std::chrono::milliseconds(200)), std::exception);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(seconds, 0.45);
  EXPECT_LT(seconds, 3);
  server->set("after", Bytes("ok"));  // a timed-out wait leaves the connection in step
  EXPECT_EQ(String(server->get("after")), "ok");
}

TEST(BoundStore, LosingTheServerFailsCallsInsteadOfHanging) {
  auto server = ServeStore();
  ASSERT_TRUE(server);
  auto client = ConnectStore(server->port(), std::chrono::seconds(60));
  ASSERT_TRUE(client);
  std::thread stop([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    server.reset();  // the last reference to rank 0's store: its server stops
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(client->get("never"), std::exception);  // parked on the server when it goes
  stop.join();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5);
  EXPECT_THROW(client->set("x", Bytes("y")), std::exception);
}

TEST(BoundStore, StrayBytesCloseThatConnectionOnly) {
  auto server = ServeStore();
  ASSERT_TRUE(server);
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(server->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string http = "GET / HTTP/1.1\r\n\r\n";  // a frame length of ~1.2 GB: refused
  ASSERT_EQ(::send(fd, http.data(), http.size(), MSG_NOSIGNAL), static_cast<ssize_t>(http.size()));
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char byte;
  EXPECT_EQ(::recv(fd, &byte, 1, 0), 0) << "the server closes a connection that is not one of its clients";
  ::close(fd);
  server->set("still", Bytes("serving"));
  EXPECT_EQ(String(ConnectStore(server->port())->get("still")), "serving");
}

TEST(BoundStore, ListensOnTheRendezvousHostOnly) {
  auto store = ServeStore();
  ASSERT_TRUE(store);
  EXPECT_THAT(ListeningAddresses(store->port()), ::testing::ElementsAre("0100007F"));
  // The control: LibTorch's TCPStore, asked for the same host, listens on every interface.
  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(FindFreeLoopbackPort());
  options.isServer = true;
  options.waitWorkers = false;
  options.timeout = std::chrono::seconds(5);
  c10d::TCPStore tcp("127.0.0.1", options);
  const auto wildcard = ListeningAddresses(options.port);
  ASSERT_FALSE(wildcard.empty());
  for (const auto& a : wildcard) EXPECT_THAT(a, ::testing::Not("0100007F"));
}

TEST(BoundStore, BindAndConnectErrorsNameTheAddress) {
  auto first = ServeStore();
  ASSERT_TRUE(first);
  auto taken = BoundStore::Connect("127.0.0.1", first->port(), /*serve=*/true, std::chrono::seconds(1));
  ASSERT_FALSE(taken.ok());
  EXPECT_THAT(std::string(taken.status().message()),
              HasSubstr(absl::StrCat("127.0.0.1:", first->port(), ": cannot listen")));
  const int nobody = FindFreeLoopbackPort();
  const auto start = std::chrono::steady_clock::now();
  auto refused = BoundStore::Connect("127.0.0.1", nobody, /*serve=*/false, std::chrono::milliseconds(500));
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr(absl::StrCat("127.0.0.1:", nobody)));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 3);
}

// A gang's rank 0, waiting in the rendezvous for rank 1, serves the store on 127.0.0.1 only.
TEST(Rendezvous, RankZeroListensOnTheRendezvousHostOnly) {
  testing::TempDir dir;
  const int port = FindFreeLoopbackPort();
  const pid_t leader = testing::StartProcess({Probe(), "join", std::to_string(port), "0", "2", "20000"}, dir / "a");
  std::vector<std::string> listening;
  for (int i = 0; i < 200 && listening.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    listening = ListeningAddresses(port);
  }
  EXPECT_THAT(listening, ::testing::ElementsAre("0100007F"));
  const int code = testing::RunProcess({Probe(), "join", std::to_string(port), "1", "2", "20000"}, dir / "b", 60);
  EXPECT_EQ(code, 0) << testing::ReadFile(dir / "b");
  EXPECT_EQ(testing::WaitProcess(leader, 60), 0) << testing::ReadFile(dir / "a");
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
  // k = 2 from 2 shards offering 2 each, plus each shard's next value (the last slot). Token 0:
  // shard 0 holds both winners, so its lowest offer survives (possibly truncated), but its next
  // value (7) would not have made the cut (not truncated). Token 1: one winner per shard.
  const auto gathered = torch::tensor({9.f, 8.f, 7.f, 5.f, 4.f, 3.f, 9.f, 6.f, 5.f, 8.f, 5.f, 4.f})
                            .view({2, 2, 3})          // [token][shard][slot]
                            .permute({1, 0, 2})       // [shard][token][slot]
                            .contiguous();
  const auto cut = CutGlobalTopK(gathered, 0, 2, /*has_extra=*/true);
  EXPECT_TRUE(cut.possibly_truncated[0].item<bool>());
  EXPECT_FALSE(cut.truncated[0].item<bool>());
  EXPECT_FALSE(cut.possibly_truncated[1].item<bool>());
  EXPECT_FALSE(cut.truncated[1].item<bool>());
  EXPECT_TRUE(torch::equal(cut.keep[0], torch::tensor({true, true})));
  EXPECT_TRUE(torch::equal(cut.keep[1], torch::tensor({true, false})));
  EXPECT_TRUE(torch::equal(CutGlobalTopK(gathered, 1, 2, true).keep[1], torch::tensor({true, false})));
  // k = 3: token 0 keeps 9, 8 and 5, and shard 0's next value 7 beats 5: truncated.
  const auto three = CutGlobalTopK(gathered, 0, 3, true);
  EXPECT_TRUE(three.truncated[0].item<bool>());
  EXPECT_TRUE(three.possibly_truncated[0].item<bool>());
  EXPECT_FALSE(three.truncated[1].item<bool>());  // 9, 8, 6: the next values 5 and 4 lose
  // Ties go to the lower shard: values {1, 1} on both shards, k = 1.
  const auto ties = torch::ones({2, 1, 1});
  EXPECT_TRUE(CutGlobalTopK(ties, 0, 1, false).keep.item<bool>());
  EXPECT_FALSE(CutGlobalTopK(ties, 1, 1, false).keep.item<bool>());
  // -inf marks an empty slot: never kept even when k asks for more.
  const auto empty = torch::tensor({3.f, -INFINITY}).view({2, 1, 1});
  EXPECT_FALSE(CutGlobalTopK(empty, 1, 2, false).keep.item<bool>());
}

// BatchTopK's cut over the whole batch: exact candidates give the global top k * B of the
// concatenated matrix, and the next value tells a real truncation from a possible one.
TEST(ShardedSelection, BatchCutIsTheGlobalBatchTopK) {
  torch::manual_seed(4);
  const int64_t batch = 16, shards = 4, per_shard = 24, k = 3, take = k * batch;
  const auto pre = torch::randn({batch, shards * per_shard});
  auto want = torch::zeros({batch * shards * per_shard}, torch::kBool);
  want.scatter_(0, std::get<1>(pre.reshape({-1}).topk(take)), true);
  auto got = torch::zeros_like(want);
  const auto blocks = pre.view({batch, shards, per_shard}).permute({1, 0, 2});  // [S, B, n/S]
  std::vector<torch::Tensor> values, positions;
  for (int64_t s = 0; s < shards; ++s) {
    auto [v, i] = blocks[s].reshape({-1}).topk(take);
    values.push_back(v);
    positions.push_back(i);
  }
  const auto gathered = torch::stack(values);
  for (int64_t s = 0; s < shards; ++s) {
    const auto cut = CutGlobalBatchTopK(gathered, s, take, false);
    const auto row = positions[s].div(per_shard, "floor"), col = positions[s].remainder(per_shard) + s * per_shard;
    got.index_put_({(row * shards * per_shard + col).masked_select(cut.keep)}, true);
  }
  EXPECT_TRUE(torch::equal(got, want));
  // Two shards offering 3 and their next value, take 4: shard 0's next value 6 beats the kept 5.
  const auto small = torch::tensor({9.f, 8.f, 7.f, 6.f, 5.f, 4.f, 3.f, 2.f}).view({2, 4});
  const auto cut = CutGlobalBatchTopK(small, 0, 4, true);
  EXPECT_TRUE(torch::equal(cut.keep, torch::tensor({true, true, true})));
  EXPECT_TRUE(cut.possibly_truncated.item<bool>());
  EXPECT_TRUE(cut.truncated.item<bool>());
  // Take 3: shard 0 offers all three winners, but its next value 6 loses to 7: not truncated.
  const auto three = CutGlobalBatchTopK(small, 0, 3, true);
  EXPECT_TRUE(three.possibly_truncated.item<bool>());
  EXPECT_FALSE(three.truncated.item<bool>());
}

}  // namespace
}  // namespace saegrid
