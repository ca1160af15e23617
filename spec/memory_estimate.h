// How much memory one rank of a job needs, estimated from its configuration alone, so that the
// coordinator refuses a job no machine could hold and places the others only on workers with
// room for them. The estimate counts what the engine allocates in proportion to the job's sizes
// (parameters with their gradients, Adam moments and EMA; batches; the encoder chunk; the
// synthetic dataset or the shuffle buffer; the evaluation sample) plus a fixed runtime overhead.
// It is an estimate: a rank can still run out of memory, which fails the job without retries.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engine/config.h"

namespace saegrid {

struct MemoryEstimate {
  int64_t parameters = 0;  // weights, gradients, optimizer moments, EMA, dead-latent counters
  int64_t batches = 0;     // input batches in flight, reconstructions, sparse activations
  int64_t encoder = 0;     // the encoder's chunk of pre-activations (the k architectures: TopK,
                           // BatchTopK, Matryoshka) or a whole matrix (ReLU, JumpReLU)
  int64_t data = 0;        // the synthetic dataset, or the shuffle buffer of a file source
  int64_t evaluation = 0;
  int64_t runtime = 0;     // the process itself (LibTorch, BLAS buffers)
  int64_t total() const;  // saturates instead of overflowing
  std::string ToString() const;  // "12.3 GiB (parameters 8.0 GiB, data 4.0 GiB, ...)"
};

// Per rank of the job's parallelism layout. Sizes taken from the data (d_in 0 with a file source)
// count as zero.
MemoryEstimate EstimateRankMemory(const TrainConfig& config);

// No machine has more memory than this per process; a job estimated above it is refused.
inline constexpr int64_t kMaxRankMemoryBytes = int64_t{4} << 40;  // 4 TiB

// INVALID_ARGUMENT when the estimate exceeds kMaxRankMemoryBytes (or overflows), naming the
// sizes that make it so.
absl::Status ValidateRankMemory(const TrainConfig& config);

}  // namespace saegrid
