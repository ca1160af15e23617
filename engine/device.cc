#include "engine/device.h"

#include <ATen/Context.h>
#include <torch/cuda.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/device_name.h"
#include "kernels/dispatch.h"

namespace saegrid {

absl::StatusOr<c10::Device> ResolveTrainingDevice(const ParallelConfig& parallel, int64_t world_size) {
  const std::string& name = parallel.device.empty() ? std::string("cpu") : parallel.device;
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("parallelism.device: ", why));
  };
  const auto parsed = ParseDeviceName(name);
  if (!parsed) return bad(absl::StrCat("must be \"cpu\", \"cuda\" or \"cuda:N\", got \"", name, "\""));
  if (parsed->kind == "cpu") {
    if (parallel.backend == "nccl") {
      return absl::InvalidArgumentError("parallelism.backend: nccl moves CUDA tensors; use gloo with device cpu");
    }
    return c10::Device(c10::kCPU);
  }
  if (!torch::cuda::is_available()) {
    return bad(absl::StrCat("\"", name, "\" needs a CUDA build of LibTorch and a visible GPU; this one sees none"));
  }
  const int index = std::max(parsed->index, 0);
  const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
  if (index >= count) return bad(absl::StrCat("\"", name, "\": this machine has ", count, " CUDA devices"));
  if (world_size > 1 && parallel.backend != "nccl") {
    return absl::InvalidArgumentError(
        "parallelism.backend: a gang of CUDA ranks needs nccl (gloo moves CPU tensors only)");
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

absl::Status ApplyKernelSettings(const ParallelConfig& parallel) {
  const std::string& kernels = parallel.kernels;
  if (kernels.empty() || kernels == "auto") {
    kernels::ForcePortableKernels(false);
  } else if (kernels == "portable") {
    kernels::ForcePortableKernels(true);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("parallelism.kernels: must be \"auto\" or \"portable\", got \"", kernels, "\""));
  }
  // Raising on an operation without a deterministic variant would end a run that only asked for
  // reproducible scatters: LibTorch's own such operations warn instead.
  at::globalContext().setDeterministicAlgorithms(parallel.deterministic, /*warn_only=*/true);
  return absl::OkStatus();
}

}  // namespace saegrid
