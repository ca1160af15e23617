// Deterministic, resumable order over a set of shards.
//
// Rows are cut into blocks of `block_rows` consecutive rows of one shard (cheap, sequential
// reads of the mapping). A seeded permutation sets aside `eval_fraction` of the blocks as the
// held-out split. Each epoch permutes the remaining blocks (seed, epoch). Consecutive groups of
// `shuffle_buffer_blocks` blocks form the shuffle buffer: their rows are permuted together
// (seed, epoch, group). This global order does not depend on the number of replicas: replica r
// of R reads only rows [r B/R, (r+1) B/R) of every global batch of B rows, so the replicas'
// partitions are disjoint and together they train on exactly the batches a single process
// would. The position is a cursor (epoch, rows of the global order consumed in that epoch), the
// same on every rank, so an interrupted run resumes on exactly the rows it would have read, with
// any number of replicas.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/activation_shard.h"

namespace saegrid {

struct DataCursor {
  int64_t epoch = 0;
  int64_t offset = 0;  // rows of the global order consumed in this epoch
  bool operator==(const DataCursor& o) const { return epoch == o.epoch && offset == o.offset; }
};

struct StreamOptions {
  int64_t block_rows = 1024;
  int64_t shuffle_buffer_blocks = 64;
  double eval_fraction = 0.05;
  uint64_t seed = 0;
  int replica = 0;
  int num_replicas = 1;
  // Training batches in page-locked memory, so that copying them to a GPU is asynchronous.
  bool pin_memory = false;
};

struct Batch {
  torch::Tensor x;       // [B, d] float32
  torch::Tensor tokens;  // [B] int64, or undefined when the shards carry no token ids
  DataCursor cursor_after;
};

class ActivationStream {
 public:
  static absl::StatusOr<std::unique_ptr<ActivationStream>> Create(
      std::vector<std::shared_ptr<ActivationShard>> shards, const StreamOptions& options);

  // This replica's part of the next global batch of `global_batch_size` rows (divisible by
  // the number of replicas).
  absl::StatusOr<Batch> Next(int64_t global_batch_size);
  DataCursor cursor() const { return {epoch_, offset_}; }
  absl::Status Seek(const DataCursor& cursor);

  // The held-out rows, in a fixed order, at most `max_rows` of them.
  absl::StatusOr<Batch> EvalRows(int64_t max_rows) const;
  // The first `rows` training rows of epoch 0 in the global (all-replica) order: the same sample
  // on every rank, for initialisation.
  absl::StatusOr<torch::Tensor> SampleRows(int64_t rows) const;

  int64_t d() const { return d_; }
  int64_t train_rows() const { return train_rows_; }
  int64_t eval_rows() const { return eval_rows_; }
  bool has_tokens() const { return has_tokens_; }

 private:
  struct Block {
    int32_t shard;
    int64_t begin;
    int64_t count;
  };
  ActivationStream() = default;
  void PlanEpoch(int64_t epoch);
  void LoadGroup(size_t group);
  absl::Status CopyBlockRows(const std::vector<Block>& blocks, int64_t max_rows, Batch* out) const;

  std::vector<std::shared_ptr<ActivationShard>> shards_;
  StreamOptions options_;
  int64_t d_ = 0;
  bool has_tokens_ = false;
  std::vector<Block> train_blocks_, eval_blocks_;
  int64_t train_rows_ = 0, eval_rows_ = 0;

  // Position.
  int64_t epoch_ = -1;
  int64_t offset_ = 0;
  std::vector<Block> epoch_blocks_;        // the training blocks, in epoch order
  std::vector<int64_t> group_start_rows_;  // first epoch row of each shuffle group (+ end)
  size_t group_ = 0;
  std::vector<std::pair<int32_t, int64_t>> group_rows_;  // (block index, row) shuffled
};

// Mixes seeds and counters into one 64-bit seed (splitmix64 steps).
uint64_t MixSeed(uint64_t a, uint64_t b, uint64_t c = 0);

// A permutation of [0, n) from `seed`, the same on every standard library.
std::vector<int64_t> SeededPermutation(int64_t n, uint64_t seed);

}  // namespace saegrid
