#include "engine/distributed/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"

namespace saegrid {
namespace {

absl::StatusOr<ncclDataType_t> ToNccl(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat: return ncclFloat32;
    case torch::kDouble: return ncclFloat64;
    case torch::kHalf: return ncclFloat16;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kInt: return ncclInt32;
    case torch::kLong: return ncclInt64;
    case torch::kByte: return ncclUint8;
    case torch::kChar: return ncclInt8;
    case torch::kBool: return ncclUint8;
    default:
      return absl::InvalidArgumentError(absl::StrCat("NCCL: unsupported dtype ", c10::toString(type)));
  }
}

ncclRedOp_t ToNccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMin: return ncclMin;
    case ReduceOp::kMax: return ncclMax;
    default: return ncclSum;
  }
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<Rendezvous> rendezvous, std::string group, int rank, int size)
      : rendezvous_(std::move(rendezvous)), group_(std::move(group)), rank_(rank), size_(size) {}

  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (aborted_) {
        ncclCommAbort(comm_);
      } else {
        ncclCommDestroy(comm_);
      }
    }
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Init() {
    if (cudaGetDevice(&device_index_) != cudaSuccess) return absl::InternalError("NCCL: no current CUDA device");
    if (cudaStreamCreate(&stream_) != cudaSuccess) {
      return absl::FailedPreconditionError("NCCL: cannot create a CUDA stream (no GPU on this rank?)");
    }
    ncclUniqueId id;
    const std::string key = absl::StrCat("nccl_id/", group_);
    if (rank_ == 0) {
      if (ncclGetUniqueId(&id) != ncclSuccess) return absl::InternalError("ncclGetUniqueId failed");
      auto st = rendezvous_->Set(key, std::string(id.internal, sizeof(id.internal)));
      if (!st.ok()) return st;
    } else {
      auto bytes = rendezvous_->Get(key);
      if (!bytes.ok()) return bytes.status();
      if (bytes->size() != sizeof(id.internal)) return absl::InternalError("NCCL: malformed unique id in the store");
      std::copy(bytes->begin(), bytes->end(), id.internal);
    }
    // Non-blocking, so that a missing peer ends in an abort at the timeout instead of a hang.
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm_, size_, id, rank_, &config);
    if (r != ncclSuccess && r != ncclInProgress) return Failed("init", ncclGetErrorString(r));
    return WaitForComm("init");
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "nccl"; }
  c10::Device device() const override {
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device_index_));
  }

  absl::Status AllReduce(torch::Tensor& tensor, ReduceOp op) override {
    auto st = CheckTensor(tensor);
    if (!st.ok()) return st;
    if (op == ReduceOp::kAvg && !tensor.is_floating_point()) {
      return absl::InvalidArgumentError("all-reduce average needs a floating-point tensor");
    }
    auto type = ToNccl(tensor.scalar_type());
    if (!type.ok()) return type.status();
    st = Launch("all-reduce", ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(),
                                           *type, ToNccl(op), comm_, stream_));
    if (st.ok()) CountAllReduce(tensor.nbytes());
    return st;
  }

  absl::StatusOr<torch::Tensor> AllGather(const torch::Tensor& input) override {
    auto in = input.contiguous();
    auto st = CheckTensor(in);
    if (!st.ok()) return st;
    auto type = ToNccl(in.scalar_type());
    if (!type.ok()) return type.status();
    std::vector<int64_t> shape{size_};
    shape.insert(shape.end(), in.sizes().begin(), in.sizes().end());
    auto out = torch::empty(shape, in.options());
    st = Launch("all-gather", ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), *type, comm_, stream_));
    if (!st.ok()) return st;
    CountAllGather(in.nbytes());
    return out;
  }

  absl::Status Broadcast(torch::Tensor& tensor, int root) override {
    auto st = CheckTensor(tensor);
    if (!st.ok()) return st;
    auto type = ToNccl(tensor.scalar_type());
    if (!type.ok()) return type.status();
    st = Launch("broadcast", ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), *type,
                                           root, comm_, stream_));
    if (st.ok()) CountBroadcast(tensor.nbytes(), root);
    return st;
  }

  absl::Status Barrier() override {
    auto token = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat).device(device()));
    return AllReduce(token, ReduceOp::kSum);
  }

 private:
  absl::Status CheckTensor(const torch::Tensor& t) const {
    if (!t.is_cuda()) {
      return absl::InvalidArgumentError("NCCL collectives take CUDA tensors (use backend gloo on CPU)");
    }
    if (!t.is_contiguous()) return absl::InvalidArgumentError("NCCL collectives take contiguous tensors");
    return absl::OkStatus();
  }

  absl::Status Failed(const char* what, const std::string& cause) {
    return rendezvous_->DescribeFailure(absl::StrCat("NCCL ", what, " in group ", group_), cause);
  }

  // Polls the communicator until its pending operation (init) completes.
  absl::Status WaitForComm(const char* what) {
    const auto deadline = std::chrono::steady_clock::now() + rendezvous_->options().timeout;
    while (true) {
      ncclResult_t state;
      ncclCommGetAsyncError(comm_, &state);
      if (state == ncclSuccess) return absl::OkStatus();
      if (state != ncclInProgress) {
        aborted_ = true;
        return Failed(what, ncclGetErrorString(state));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        aborted_ = true;
        return Failed(what, "timed out");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  // Orders the collective after the legacy default stream (where LibTorch runs unless told
  // otherwise), then waits for it with the timeout, aborting the communicator past it.
  absl::Status Launch(const char* what, ncclResult_t launched) {
    if (launched != ncclSuccess && launched != ncclInProgress) return Failed(what, ncclGetErrorString(launched));
    const auto deadline = std::chrono::steady_clock::now() + rendezvous_->options().timeout;
    while (true) {
      const cudaError_t done = cudaStreamQuery(stream_);
      if (done == cudaSuccess) return absl::OkStatus();
      if (done != cudaErrorNotReady) return Failed(what, cudaGetErrorString(done));
      ncclResult_t state;
      ncclCommGetAsyncError(comm_, &state);
      if (state != ncclSuccess && state != ncclInProgress) {
        aborted_ = true;
        return Failed(what, ncclGetErrorString(state));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        aborted_ = true;
        return Failed(what, "timed out waiting for the collective");
      }
      std::this_thread::yield();
    }
  }

  std::shared_ptr<Rendezvous> rendezvous_;
  std::string group_;
  int rank_, size_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int device_index_ = 0;
  bool aborted_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    std::shared_ptr<Rendezvous> rendezvous, const std::string& group,
    const std::vector<int>& world_ranks, int device_index) {
  const auto it = std::find(world_ranks.begin(), world_ranks.end(), rendezvous->rank());
  if (it == world_ranks.end()) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rendezvous->rank(), " is not in group ", group));
  }
  if (!torch::cuda::is_available()) {
    return absl::FailedPreconditionError(
        "parallelism.backend nccl needs CUDA, but this LibTorch sees no CUDA device");
  }
  if (device_index >= 0 && cudaSetDevice(device_index) != cudaSuccess) {
    return absl::FailedPreconditionError(absl::StrCat("NCCL: cannot use CUDA device ", device_index));
  }
  auto comm = std::make_unique<NcclCommunicator>(rendezvous, group,
                                                 static_cast<int>(it - world_ranks.begin()),
                                                 static_cast<int>(world_ranks.size()));
  auto st = comm->Init();
  if (!st.ok()) return st;
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace saegrid
