// The communicator of a group of one: every collective is the identity. A single-process run
// uses it, so that the trainer has one code path for every layout.
#pragma once

#include "engine/distributed/communicator.h"

namespace saegrid {

class LocalCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* backend() const override { return "local"; }
  absl::Status AllReduce(torch::Tensor& tensor, ReduceOp op) override {
    if (op == ReduceOp::kAvg && !tensor.is_floating_point()) {
      return absl::InvalidArgumentError("all-reduce average needs a floating-point tensor");
    }
    return absl::OkStatus();
  }
  absl::StatusOr<torch::Tensor> AllGather(const torch::Tensor& input) override {
    return input.unsqueeze(0).clone();
  }
  absl::Status Broadcast(torch::Tensor& tensor, int root) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

}  // namespace saegrid
