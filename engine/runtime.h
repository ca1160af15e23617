// Process-wide LibTorch settings. Debian's LibTorch reports one thread unless told otherwise, and
// several ranks on one machine must split its cores, so the count is always set explicitly.
#pragma once

namespace saegrid {

// Sets LibTorch's intra-op thread count (0: every core of this machine); returns the count used.
int ConfigureThreads(int num_threads);

// OpenBLAS picks its kernels from CPUID when it is loaded. On virtual machines that hide the CPU
// model it falls back to a generic SSE3 core ("Prescott") and runs float32 GEMM about 3.5x below
// the machine's AVX-512 speed. When that happened, this re-executes the program (argv, via
// /proc/self/exe) with OPENBLAS_CORETYPE set from the CPU's feature flags, since OpenBLAS reads
// it only at load. It returns without doing anything when the detection matches the CPU, when
// OPENBLAS_CORETYPE is already set, or when the BLAS is not OpenBLAS. Call it first in main().
void ReexecIfBlasMisdetected(char** argv);

// The OpenBLAS core in use ("" when the BLAS is not OpenBLAS), for benchmark reports.
const char* BlasCoreName();

}  // namespace saegrid
