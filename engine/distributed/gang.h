// One rank's view of a training gang: world = S latent shards x R data-parallel replicas.
// Rank r holds shard r % S of replica r / S. The shard group (the S ranks of one replica) runs
// the sharded top-k and sums partial reconstructions; the replica group (the R ranks that hold
// the same shard) averages gradients.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/distributed/communicator.h"
#include "engine/distributed/rendezvous.h"

namespace saegrid {

struct ParallelLayout {
  int shards = 1;
  int replicas = 1;
  int rank = 0;

  int world_size() const { return shards * replicas; }
  int shard() const { return rank % shards; }
  int replica() const { return rank / shards; }
  std::vector<int> ShardGroupRanks() const;    // the ranks of this rank's replica
  std::vector<int> ReplicaGroupRanks() const;  // the ranks that hold this rank's shard
};

struct Gang {
  ParallelLayout layout;
  std::shared_ptr<Rendezvous> rendezvous;  // null for a single process
  std::unique_ptr<Communicator> world;
  std::unique_ptr<Communicator> shard_group;
  std::unique_ptr<Communicator> replica_group;
};

// A gang of one process: local communicators, no store.
std::unique_ptr<Gang> SingleProcessGang();

// Joins the rendezvous as `options.rank` of shards x replicas ranks and connects the world,
// shard and replica groups with the configured backend. `bind_host` is where this rank accepts
// its peers' connections (Gloo).
absl::StatusOr<std::unique_ptr<Gang>> JoinGang(const ParallelConfig& config,
                                              const RendezvousOptions& options,
                                              const std::string& bind_host);

// The backends compiled into this build, e.g. "gloo" or "gloo, nccl".
std::string CompiledBackends();

}  // namespace saegrid
