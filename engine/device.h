// The device a run trains on and the kernels that serve it, resolved once from the config so
// that everything after works with a torch::Device and never parses a string again.
#pragma once

#include <c10/core/Device.h>

#include <string>

#include "absl/status/statusor.h"
#include "engine/config.h"

namespace saegrid {

// "cpu", "cuda" (the current CUDA device, 0 unless CUDA_VISIBLE_DEVICES says otherwise) or
// "cuda:N". An error names parallelism.device: an unknown name, a LibTorch without CUDA, an index
// past the devices it sees. A CUDA device needs backend nccl when the gang has more than one
// rank (Gloo here moves CPU tensors only), and nccl needs a CUDA device.
absl::StatusOr<c10::Device> ResolveTrainingDevice(const ParallelConfig& parallel, int64_t world_size);

// Applies parallelism.kernels ("auto": each device's own kernels; "portable": the LibTorch-operator
// implementations everywhere, kernels/dispatch.h) and parallelism.deterministic. Process-wide.
absl::Status ApplyKernelSettings(const ParallelConfig& parallel);

}  // namespace saegrid
