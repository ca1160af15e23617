// Which implementation of a kernel serves a tensor: the one routing decision of kernels/, made
// here and nowhere else. CPU tensors go to kernels/cpu/, CUDA tensors to kernels/cuda/ when this
// build has the CUDA kernels, and every other device (or CUDA without them) to kernels/portable/,
// the same API written with LibTorch operators only, so that it runs wherever LibTorch runs.
//
// The portable path can be forced for every device (tests, and `runtime.kernels: portable`),
// which is how its agreement with the CPU kernels and the whole training step on it are checked
// on a machine without a GPU. The setting is process-wide, like LibTorch's thread count.
#pragma once

#include <c10/core/Device.h>

namespace saegrid::kernels {

enum class Implementation { kCpu, kCuda, kPortable };

// "cpu", "cuda" or "portable".
const char* ImplementationName(Implementation implementation);

// The implementation that serves tensors on `device` under the current setting.
Implementation ImplementationFor(const c10::Device& device);

// Whether kernels/cuda/ was compiled into this build (a CUDA LibTorch was found).
bool CudaKernelsBuilt();

// Process-wide; off by default. Thread-safe, but a change is not meant to race running kernels.
void ForcePortableKernels(bool force);
bool PortableKernelsForced();

// Forces (or unforces) the portable path for its scope and restores the previous setting.
class ScopedPortableKernels {
 public:
  explicit ScopedPortableKernels(bool force = true);
  ~ScopedPortableKernels();
  ScopedPortableKernels(const ScopedPortableKernels&) = delete;
  ScopedPortableKernels& operator=(const ScopedPortableKernels&) = delete;

 private:
  bool previous_;
};

}  // namespace saegrid::kernels
