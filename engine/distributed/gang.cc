#include "engine/distributed/gang.h"

#include "absl/strings/str_cat.h"
#include "engine/distributed/local_communicator.h"
#ifdef SAEGRID_WITH_GLOO
#include "engine/distributed/gloo_communicator.h"
#endif
#ifdef SAEGRID_WITH_NCCL
#include "base/device_name.h"
#include "engine/distributed/nccl_communicator.h"
#endif

namespace saegrid {

std::vector<int> ParallelLayout::ShardGroupRanks() const {
  std::vector<int> ranks;
  for (int s = 0; s < shards; ++s) ranks.push_back(replica() * shards + s);
  return ranks;
}

std::vector<int> ParallelLayout::ReplicaGroupRanks() const {
  std::vector<int> ranks;
  for (int r = 0; r < replicas; ++r) ranks.push_back(r * shards + shard());
  return ranks;
}

std::unique_ptr<Gang> SingleProcessGang() {
  auto gang = std::make_unique<Gang>();
  gang->world = std::make_unique<LocalCommunicator>();
  gang->shard_group = std::make_unique<LocalCommunicator>();
  gang->replica_group = std::make_unique<LocalCommunicator>();
  return gang;
}

std::string CompiledBackends() {
  std::string backends;
#ifdef SAEGRID_WITH_GLOO
  backends = "gloo";
#endif
#ifdef SAEGRID_WITH_NCCL
  absl::StrAppend(&backends, backends.empty() ? "" : ", ", "nccl");
#endif
  return backends.empty() ? "none" : backends;
}

namespace {

absl::StatusOr<std::unique_ptr<Communicator>> Connect(const ParallelConfig& config,
                                                      std::shared_ptr<Rendezvous> rendezvous,
                                                      const std::string& group,
                                                      const std::vector<int>& ranks,
                                                      const std::string& bind_host) {
  if (config.backend == "nccl") {
#ifdef SAEGRID_WITH_NCCL
    // parallelism.device cuda:N puts this rank on GPU N (the trainer resolves the same device).
    const auto device = ParseDeviceName(config.device);
    return CreateNcclCommunicator(std::move(rendezvous), group, ranks, device ? device->index : -1);
#else
    return absl::FailedPreconditionError(absl::StrCat(
        "parallelism.backend: nccl is not compiled into this build (it needs CUDA, NCCL and a "
        "CUDA-enabled LibTorch); compiled backends: ", CompiledBackends()));
#endif
  }
#ifdef SAEGRID_WITH_GLOO
  return CreateGlooCommunicator(std::move(rendezvous), group, ranks, bind_host);
#else
  return absl::FailedPreconditionError(absl::StrCat(
      "parallelism.backend: gloo is not compiled into this build (install libgloo-dev); "
      "compiled backends: ", CompiledBackends()));
#endif
}

}  // namespace

absl::StatusOr<std::unique_ptr<Gang>> JoinGang(const ParallelConfig& config,
                                              const RendezvousOptions& options,
                                              const std::string& bind_host) {
  auto gang = std::make_unique<Gang>();
  gang->layout = {static_cast<int>(config.shards), static_cast<int>(config.replicas), options.rank};
  if (options.world_size != gang->layout.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world size ", options.world_size, " differs from parallelism.shards x parallelism.replicas = ",
        config.shards, " x ", config.replicas, " = ", gang->layout.world_size()));
  }
  auto rendezvous = Rendezvous::Join(options);
  if (!rendezvous.ok()) return rendezvous.status();
  gang->rendezvous = *rendezvous;
  const ParallelLayout& l = gang->layout;
  std::vector<int> all(l.world_size());
  for (int r = 0; r < l.world_size(); ++r) all[r] = r;
  // Every rank creates the groups in the same order; a group's name is unique in the gang.
  auto world = Connect(config, gang->rendezvous, "world", all, bind_host);
  if (!world.ok()) return world.status();
  gang->world = *std::move(world);
  auto shard = Connect(config, gang->rendezvous, absl::StrCat("replica", l.replica(), "_shards"),
                       l.ShardGroupRanks(), bind_host);
  if (!shard.ok()) return shard.status();
  gang->shard_group = *std::move(shard);
  auto replica = Connect(config, gang->rendezvous, absl::StrCat("shard", l.shard(), "_replicas"),
                         l.ReplicaGroupRanks(), bind_host);
  if (!replica.ok()) return replica.status();
  gang->replica_group = *std::move(replica);
  return gang;
}

}  // namespace saegrid
