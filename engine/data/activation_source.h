// What the trainer reads activations through: fixed-size training batches in a deterministic,
// resumable order (prefetched in the background), the held-out evaluation split, and a sample
// for initialisation.
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/data/activation_stream.h"

namespace saegrid {

// How busy a source's background producer was: the seconds it spent making data and the seconds
// the trainer waited for a batch. The on-the-fly language-model source's overlap figure; zero for
// sources that only copy rows.
struct SourceActivity {
  double producer_busy_seconds = 0;
  double consumer_wait_seconds = 0;
  int64_t rows_produced = 0;  // rows the producer made (not rows it was handed ready-made)
};

class ActivationSource {
 public:
  virtual ~ActivationSource() = default;
  virtual int64_t d_in() const = 0;
  virtual absl::StatusOr<Batch> NextBatch() = 0;
  // Position after the last batch NextBatch returned; Restore makes the next batch the one that
  // followed it.
  virtual DataCursor cursor() const = 0;
  virtual absl::Status Restore(const DataCursor& cursor) = 0;
  virtual absl::StatusOr<Batch> EvalSplit(int64_t max_rows) const = 0;
  virtual absl::StatusOr<torch::Tensor> Sample(int64_t rows) const = 0;
  // The same sample read by this rank alone, never a collective: what the leader evaluates on when
  // there is no held-out split. Only where EvalSplit works.
  virtual absl::StatusOr<torch::Tensor> LocalSample(int64_t rows) const { return Sample(rows); }
  // Ground-truth feature directions [F, d] when the data is synthetic; undefined otherwise.
  virtual torch::Tensor ground_truth() const = 0;
  virtual SourceActivity activity() const { return {}; }
};

// Opens the source a DataConfig names (files, the synthetic generator, or a language model run
// on the fly on `device`) for one data-parallel replica. `pin_memory`: training batches in
// page-locked memory (a CUDA run; needs a CUDA LibTorch), which the prefetch thread fills while
// the step runs.
absl::StatusOr<std::unique_ptr<ActivationSource>> OpenActivationSource(const DataConfig& config,
                                                                      int replica = 0,
                                                                      int num_replicas = 1,
                                                                      bool pin_memory = false,
                                                                      torch::Device device = torch::kCPU);

// The shard files behind `path`: a directory (its *.npy and *.safetensors files in name order,
// token files excluded), a manifest .json ({"shards": ["a.npy", {"path": ..., "tokens": ...}]},
// paths relative to the manifest), or a single shard file.
struct ShardPath {
  std::string path;
  std::string tokens_path;  // empty: the default pairing (X.tokens.npy)
};
absl::StatusOr<std::vector<ShardPath>> ListShardPaths(const std::string& path);

}  // namespace saegrid
