// Communicator over LibTorch's c10d ProcessGroupGloo: CPU tensors, TCP between the ranks.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/distributed/communicator.h"
#include "engine/distributed/rendezvous.h"

namespace saegrid {

// A process group over `world_ranks` (this rank among them), named `group` in the store so that
// several groups of one gang (its shard and replica groups) rendezvous apart. Every rank in
// `world_ranks` must call this with the same arguments. `bind_host` is the address this rank
// listens on for its peers.
absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(
    std::shared_ptr<Rendezvous> rendezvous, const std::string& group,
    const std::vector<int>& world_ranks, const std::string& bind_host);

}  // namespace saegrid
