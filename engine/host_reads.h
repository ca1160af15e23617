// Reads of tensor values by the host. On an accelerator each one waits until the device has
// finished all the work queued before it, so the training step keeps them few (at most two per
// step that logs nothing: the dead-latent count AuxK's width depends on, and the loss check). The
// engine's explicit reads go through ToHost, which counts them; HostSyncCounter also counts the
// LibTorch operators that read device memory implicitly (item(), nonzero, masked_select, ...),
// so a test or a benchmark can assert or report the number per step on any device.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>

namespace saegrid {

// A host copy of `t` (itself when it is already on the CPU), counted as one read.
torch::Tensor ToHost(const torch::Tensor& t);

// Explicit reads (ToHost) since the process started.
int64_t ExplicitHostReads();

// While alive, counts on this thread the explicit reads and the calls of LibTorch operators that
// synchronise with the device to return a value to the host. One at a time per thread: the implicit count is
// thread-local and starts again with each counter (explicit reads are counted process-wide).
class HostSyncCounter {
 public:
  HostSyncCounter();
  ~HostSyncCounter();
  HostSyncCounter(const HostSyncCounter&) = delete;
  HostSyncCounter& operator=(const HostSyncCounter&) = delete;

  // Explicit plus implicit reads since construction.
  int64_t count() const;
  int64_t implicit_count() const;

 private:
  int64_t explicit_at_start_;
  uint64_t callback_handle_;
};

}  // namespace saegrid
