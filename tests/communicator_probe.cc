// One rank of the communicator tests (tests/communicator_test.cc starts several): joins a gang
// over loopback and checks every collective against values it can compute itself.
//
//   communicator_probe collectives PORT RANK SHARDS REPLICAS   exit 0: all checks passed
//   communicator_probe join PORT RANK WORLD TIMEOUT_MS          exit 0 joined; else prints the error
//   communicator_probe nccl-vs-gloo PORT                        world size 1; exit 77: no GPU
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_format.h"
#include "engine/distributed/gang.h"
#ifdef SAEGRID_WITH_GLOO
#include "engine/distributed/gloo_communicator.h"
#endif
#ifdef SAEGRID_WITH_NCCL
#include "engine/distributed/nccl_communicator.h"
#endif

namespace saegrid {
namespace {

int failures = 0;

void Check(bool ok, const std::string& what) {
  if (!ok) {
    absl::FPrintF(stderr, "CHECK FAILED: %s\n", what);
    ++failures;
  }
}

void CheckStatus(const absl::Status& st, const std::string& what) {
  Check(st.ok(), what + ": " + std::string(st.message()));
}

// Each rank's contribution: a tensor whose values depend on its world rank.
torch::Tensor Contribution(int world_rank) {
  return torch::arange(6, torch::kFloat).view({2, 3}) * (world_rank + 1) + world_rank;
}

void CheckGroup(Communicator& comm, const std::vector<int>& world_ranks, int me, const std::string& name) {
  std::vector<torch::Tensor> all;
  for (int r : world_ranks) all.push_back(Contribution(r));
  const auto stacked = torch::stack(all);
  struct Case {
    ReduceOp op;
    torch::Tensor expected;
    const char* label;
  };
  for (const Case& c : {Case{ReduceOp::kSum, stacked.sum(0), "sum"}, Case{ReduceOp::kAvg, stacked.mean(0), "avg"},
                        Case{ReduceOp::kMin, std::get<0>(stacked.min(0)), "min"},
                        Case{ReduceOp::kMax, std::get<0>(stacked.max(0)), "max"}}) {
    auto t = Contribution(me);
    CheckStatus(comm.AllReduce(t, c.op), name + " all-reduce " + c.label);
    Check(torch::allclose(t, c.expected, 1e-6, 1e-6), name + " all-reduce " + c.label + " value");
  }
  auto gathered = comm.AllGather(Contribution(me));
  CheckStatus(gathered.status(), name + " all-gather");
  if (gathered.ok()) Check(torch::equal(*gathered, stacked), name + " all-gather value");
  const int root = comm.size() - 1;
  auto b = Contribution(me);
  CheckStatus(comm.Broadcast(b, root), name + " broadcast");
  Check(torch::equal(b, Contribution(world_ranks[root])), name + " broadcast value");
  auto ints = torch::full({4}, static_cast<int64_t>(me), torch::kLong);
  CheckStatus(comm.AllReduce(ints, ReduceOp::kMax), name + " int64 max");
  Check(ints[0].item<int64_t>() == world_ranks.back(), name + " int64 max value");
  CheckStatus(comm.Barrier(), name + " barrier");
  Check(comm.bytes_sent() > 0 || comm.size() == 1, name + " counts bytes");
}

RendezvousOptions Options(int port, int rank, int world, int timeout_ms) {
  RendezvousOptions o;
  o.port = port;
  o.rank = rank;
  o.world_size = world;
  o.timeout = std::chrono::milliseconds(timeout_ms);
  return o;
}

int Collectives(int port, int rank, int shards, int replicas) {
  ParallelConfig config;
  config.shards = shards;
  config.replicas = replicas;
  auto gang = JoinGang(config, Options(port, rank, shards * replicas, 30000), "127.0.0.1");
  if (!gang.ok()) {
    absl::FPrintF(stderr, "join failed: %s\n", gang.status().message());
    return 1;
  }
  const ParallelLayout& l = (*gang)->layout;
  std::vector<int> world(l.world_size());
  for (int r = 0; r < l.world_size(); ++r) world[r] = r;
  CheckGroup(*(*gang)->world, world, rank, "world");
  CheckGroup(*(*gang)->shard_group, l.ShardGroupRanks(), rank, "shard group");
  CheckGroup(*(*gang)->replica_group, l.ReplicaGroupRanks(), rank, "replica group");
  Check((*gang)->shard_group->size() == shards && (*gang)->replica_group->size() == replicas, "group sizes");
  return failures == 0 ? 0 : 1;
}

int Join(int port, int rank, int world, int timeout_ms) {
  auto r = Rendezvous::Join(Options(port, rank, world, timeout_ms));
  if (!r.ok()) {
    absl::FPrintF(stderr, "%s\n", r.status().message());
    return 3;
  }
  return 0;
}

int NcclVsGloo(int port) {
#if defined(SAEGRID_WITH_NCCL) && defined(SAEGRID_WITH_GLOO)
  if (!torch::cuda::is_available()) {
    absl::FPrintF(stderr, "no CUDA device\n");
    return 77;
  }
  auto rendezvous = Rendezvous::Join(Options(port, 0, 1, 30000));
  if (!rendezvous.ok()) return 1;
  auto nccl = CreateNcclCommunicator(*rendezvous, "nccl", {0});
  auto gloo = CreateGlooCommunicator(*rendezvous, "gloo", {0}, "127.0.0.1");
  if (!nccl.ok() || !gloo.ok()) {
    absl::FPrintF(stderr, "create failed: %s %s\n", nccl.status().message(), gloo.status().message());
    return 1;
  }
  const auto x = torch::randn({1000}, torch::kFloat);
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax}) {
    auto on_gpu = x.cuda();
    auto on_cpu = x.clone();
    CheckStatus((*nccl)->AllReduce(on_gpu, op), "nccl all-reduce");
    CheckStatus((*gloo)->AllReduce(on_cpu, op), "gloo all-reduce");
    Check(torch::allclose(on_gpu.cpu(), on_cpu), "nccl all-reduce matches gloo");
  }
  auto g_nccl = (*nccl)->AllGather(x.cuda());
  auto g_gloo = (*gloo)->AllGather(x);
  Check(g_nccl.ok() && g_gloo.ok() && torch::equal(g_nccl->cpu(), *g_gloo), "nccl all-gather matches gloo");
  auto b = x.cuda();
  CheckStatus((*nccl)->Broadcast(b, 0), "nccl broadcast");
  Check(torch::equal(b.cpu(), x), "nccl broadcast value");
  CheckStatus((*nccl)->Barrier(), "nccl barrier");
  return failures == 0 ? 0 : 1;
#else
  absl::FPrintF(stderr, "NCCL backend not compiled (backends: %s)\n", CompiledBackends());
  return 77;
#endif
}

}  // namespace
}  // namespace saegrid

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  auto arg = [&](int i) { return i < argc ? std::atoi(argv[i]) : 0; };
  if (mode == "collectives") return saegrid::Collectives(arg(2), arg(3), arg(4), arg(5));
  if (mode == "join") return saegrid::Join(arg(2), arg(3), arg(4), arg(5));
  if (mode == "nccl-vs-gloo") return saegrid::NcclVsGloo(arg(2));
  absl::FPrintF(stderr, "usage: communicator_probe collectives|join|nccl-vs-gloo ...\n");
  return 2;
}
