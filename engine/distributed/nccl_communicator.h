// Communicator over NCCL for CUDA tensors: one GPU per rank (NCCL's rule), the unique id passed
// through the rendezvous store. Compiled when CUDA and NCCL are found (SAEGRID_WITH_NCCL).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/distributed/communicator.h"
#include "engine/distributed/rendezvous.h"

namespace saegrid {

// Uses CUDA device `device_index`, made the calling thread's current device (-1: the current
// device as it is). Collectives run on a stream of their own,
// ordered after the legacy default stream's work, and are waited for (with the rendezvous
// timeout; past it the communicator is aborted, so that nothing hangs).
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    std::shared_ptr<Rendezvous> rendezvous, const std::string& group,
    const std::vector<int>& world_ranks, int device_index = -1);

}  // namespace saegrid
