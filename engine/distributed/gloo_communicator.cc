#include "engine/distributed/gloo_communicator.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/torch.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace saegrid {
namespace {

c10d::ReduceOp ToGloo(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMin: return c10d::ReduceOp::MIN;
    case ReduceOp::kMax: return c10d::ReduceOp::MAX;
    default: return c10d::ReduceOp::SUM;  // kAvg: a sum, divided afterwards (Gloo has no AVG)
  }
}

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<Rendezvous> rendezvous, std::string group,
                   c10::intrusive_ptr<c10d::ProcessGroupGloo> pg)
      : rendezvous_(std::move(rendezvous)), group_(std::move(group)), pg_(std::move(pg)) {}

  int rank() const override { return pg_->getRank(); }
  int size() const override { return pg_->getSize(); }
  const char* backend() const override { return "gloo"; }

  absl::Status AllReduce(torch::Tensor& tensor, ReduceOp op) override {
    if (op == ReduceOp::kAvg && !tensor.is_floating_point()) {
      return absl::InvalidArgumentError("all-reduce average needs a floating-point tensor");
    }
    if (size() == 1) return absl::OkStatus();
    std::vector<at::Tensor> tensors{tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = ToGloo(op);
    auto st = Run("all-reduce", [&] { return pg_->allreduce(tensors, options); });
    if (!st.ok()) return st;
    if (op == ReduceOp::kAvg) tensor.div_(size());
    CountAllReduce(tensor.nbytes());
    return absl::OkStatus();
  }

  absl::StatusOr<torch::Tensor> AllGather(const torch::Tensor& input) override {
    auto in = input.contiguous();
    if (size() == 1) return in.unsqueeze(0).clone();
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < size(); ++r) outputs[0].push_back(torch::empty_like(in));
    std::vector<at::Tensor> inputs{in};
    auto st = Run("all-gather", [&] { return pg_->allgather(outputs, inputs); });
    if (!st.ok()) return st;
    CountAllGather(in.nbytes());
    return torch::stack(outputs[0]);
  }

  absl::Status Broadcast(torch::Tensor& tensor, int root) override {
    if (size() == 1) return absl::OkStatus();
    std::vector<at::Tensor> tensors{tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    auto st = Run("broadcast", [&] { return pg_->broadcast(tensors, options); });
    if (st.ok()) CountBroadcast(tensor.nbytes(), root);
    return st;
  }

  absl::Status Barrier() override {
    if (size() == 1) return absl::OkStatus();
    return Run("barrier", [&] { return pg_->barrier(); });
  }

 private:
  template <typename Launch>
  absl::Status Run(const char* what, Launch launch) {
    try {
      auto work = launch();
      work->wait();  // bounded by the process group's timeout
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return rendezvous_->DescribeFailure(absl::StrCat(what, " in group ", group_), e.what());
    }
  }

  std::shared_ptr<Rendezvous> rendezvous_;
  std::string group_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(
    std::shared_ptr<Rendezvous> rendezvous, const std::string& group,
    const std::vector<int>& world_ranks, const std::string& bind_host) {
  const auto it = std::find(world_ranks.begin(), world_ranks.end(), rendezvous->rank());
  if (it == world_ranks.end()) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rendezvous->rank(), " is not in group ", group));
  }
  const int group_rank = static_cast<int>(it - world_ranks.begin());
  try {
    auto options = c10d::ProcessGroupGloo::Options::create(rendezvous->options().timeout);
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(bind_host));
    options->threads = 1;  // one collective at a time: the trainer waits for each
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
        rendezvous->GroupStore(absl::StrCat("group/", group)), group_rank,
        static_cast<int>(world_ranks.size()), options);
    return std::unique_ptr<Communicator>(new GlooCommunicator(std::move(rendezvous), group, std::move(pg)));
  } catch (const std::exception& e) {
    return rendezvous->DescribeFailure(absl::StrCat("connecting group ", group, " over Gloo"), e.what());
  }
}

}  // namespace saegrid
