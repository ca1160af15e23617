// Process-wide LibTorch settings. Debian's LibTorch reports one thread unless told otherwise, and
// several ranks on one machine must split its cores, so the count is always set explicitly.
#pragma once

#include <exception>

#include "absl/status/status.h"

namespace saegrid {

// The cores this process may use: its CPU affinity set, capped by a cgroup CPU quota (a
// container limited to 2 CPUs on a 64-core host gets 2, not 64). At least 1.
int AvailableCores();

// Sets LibTorch's intra-op thread count (0: AvailableCores()); returns the count used. OpenBLAS
// (the OpenMP build) and oneDNN share this OpenMP pool, so one setting covers every kernel.
int ConfigureThreads(int num_threads);

// OpenBLAS picks its kernels from CPUID when it is loaded. On virtual machines that hide the CPU
// model it falls back to a generic SSE3 core ("Prescott") and runs float32 GEMM about 3.5x below
// the machine's AVX-512 speed. When that happened, this re-executes the program (argv, via
// /proc/self/exe) with OPENBLAS_CORETYPE set from the CPU's feature flags, since OpenBLAS reads
// it only at load. It returns without doing anything when the detection matches the CPU, when
// OPENBLAS_CORETYPE is already set, or when the BLAS is not OpenBLAS. Call it first in main().
// Silent unless SAEGRID_VERBOSE is set (not "0"): the notice would otherwise open every rank's
// log and every error message the worker reports from it.
void ReexecIfBlasMisdetected(char** argv);

// Whether the CPU multiplies bfloat16 natively (AMX-BF16 or AVX512-BF16). Without it oneDNN
// emulates bf16 and model.compute_dtype "bfloat16" is slower than float32.
bool CpuHasNativeBFloat16();

// An exception LibTorch or the standard library threw, as a one-line Status without LibTorch's
// C++ stack trace: allocation failures (std::bad_alloc, c10::OutOfMemoryError, the CPU
// allocator's c10::Error) become OutOfMemoryError (base/error_kind.h), anything else INTERNAL.
absl::Status StatusFromException(const std::exception& e);

// The OpenBLAS core in use ("" when the BLAS is not OpenBLAS), for benchmark reports.
const char* BlasCoreName();

}  // namespace saegrid
