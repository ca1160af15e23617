// Collectives between the ranks of one training gang, behind one interface so that the trainer
// does not care whether Gloo (CPU tensors) or NCCL (GPU tensors) moves the bytes.
//
// Every call blocks until the collective finished on this rank. A failure (a peer died, the
// timeout passed) comes back as a status, never as a hang: kUnavailable names the lost rank when
// the rendezvous store can tell (see Rendezvous::DescribeFailure), kDeadlineExceeded otherwise.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace saegrid {

enum class ReduceOp { kSum, kAvg, kMin, kMax };

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // within this group
  virtual int size() const = 0;
  virtual const char* backend() const = 0;
  // Where the tensors of this group's collectives must live (Gloo: the CPU; NCCL: this rank's
  // GPU). A group of one moves nothing and takes tensors on any device.
  virtual c10::Device device() const { return c10::Device(c10::kCPU); }

  // In place over `tensor` (contiguous). kAvg needs a floating-point tensor.
  virtual absl::Status AllReduce(torch::Tensor& tensor, ReduceOp op) = 0;
  // Every rank's `input` (all of the same shape and dtype), stacked: [size, ...input shape].
  virtual absl::StatusOr<torch::Tensor> AllGather(const torch::Tensor& input) = 0;
  // In place: `tensor` becomes the root's.
  virtual absl::Status Broadcast(torch::Tensor& tensor, int root) = 0;
  virtual absl::Status Barrier() = 0;

  // Payload bytes this rank has put on the wire so far, counted as the ring algorithms send them
  // (all-reduce 2(p-1)/p N, all-gather (p-1) N, broadcast (p-1) N from the root): a model of the
  // traffic, the same for every backend, for the benchmark's per-rank figure.
  int64_t bytes_sent() const { return bytes_sent_; }

 protected:
  void CountAllReduce(int64_t bytes) {
    if (size() > 1) bytes_sent_ += 2 * (size() - 1) * bytes / size();
  }
  void CountAllGather(int64_t bytes) { bytes_sent_ += (size() - 1) * bytes; }
  void CountBroadcast(int64_t bytes, int root) {
    if (rank() == root) bytes_sent_ += (size() - 1) * bytes;
  }

 private:
  int64_t bytes_sent_ = 0;
};

}  // namespace saegrid
