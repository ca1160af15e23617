#include "engine/host_reads.h"

#include <ATen/record_function.h>

#include <atomic>
#include <cstring>

namespace saegrid {
namespace {

std::atomic<int64_t> explicit_reads{0};
thread_local int64_t implicit_reads = 0;

// The operators that hand a device value to the host: item() and friends end in
// _local_scalar_dense; nonzero and masked_select have a size only the data decides.
bool Synchronises(const char* name) {
  return std::strcmp(name, "aten::_local_scalar_dense") == 0 || std::strcmp(name, "aten::nonzero") == 0 ||
         std::strcmp(name, "aten::masked_select") == 0;
}

std::unique_ptr<at::ObserverContext> OnOperatorStart(const at::RecordFunction& fn) {
  if (Synchronises(fn.name())) ++implicit_reads;
  return nullptr;
}

}  // namespace

torch::Tensor ToHost(const torch::Tensor& t) {
  explicit_reads.fetch_add(1, std::memory_order_relaxed);
  return t.device().is_cpu() ? t : t.to(torch::kCPU);
}

int64_t ExplicitHostReads() { return explicit_reads.load(std::memory_order_relaxed); }

HostSyncCounter::HostSyncCounter()
    : explicit_at_start_(ExplicitHostReads()),
      callback_handle_(at::addThreadLocalCallback(at::RecordFunctionCallback(&OnOperatorStart))) {
  implicit_reads = 0;
}

HostSyncCounter::~HostSyncCounter() { at::removeCallback(callback_handle_); }

int64_t HostSyncCounter::count() const { return ExplicitHostReads() - explicit_at_start_ + implicit_reads; }

int64_t HostSyncCounter::implicit_count() const { return implicit_reads; }

}  // namespace saegrid
