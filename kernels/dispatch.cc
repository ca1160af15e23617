#include "kernels/dispatch.h"

#include <atomic>

namespace saegrid::kernels {
namespace {

std::atomic<bool> force_portable{false};

}  // namespace

const char* ImplementationName(Implementation implementation) {
  switch (implementation) {
    case Implementation::kCpu:
      return "cpu";
    case Implementation::kCuda:
      return "cuda";
    case Implementation::kPortable:
      return "portable";
  }
  return "portable";
}

bool CudaKernelsBuilt() {
#if defined(SAEGRID_WITH_CUDA_KERNELS)
  return true;
#else
  return false;
#endif
}

Implementation ImplementationFor(const c10::Device& device) {
  if (force_portable.load(std::memory_order_relaxed)) return Implementation::kPortable;
  if (device.is_cpu()) return Implementation::kCpu;
  if (device.is_cuda() && CudaKernelsBuilt()) return Implementation::kCuda;
  return Implementation::kPortable;
}

void ForcePortableKernels(bool force) { force_portable.store(force); }

bool PortableKernelsForced() { return force_portable.load(); }

ScopedPortableKernels::ScopedPortableKernels(bool force) : previous_(PortableKernelsForced()) {
  ForcePortableKernels(force);
}

ScopedPortableKernels::~ScopedPortableKernels() { ForcePortableKernels(previous_); }

}  // namespace saegrid::kernels
