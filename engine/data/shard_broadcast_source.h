// One replica's data made once and shared by its latent shards: every shard of a replica trains
// on the same rows, and a source that computes them (a language model run on the fly) would
// otherwise repeat that work on every shard. Shard 0 of the replica reads its source and
// broadcasts each batch over the replica's shard group; the other shards hold no source.
//
// Every method that moves data is a collective of the shard group, called by all of its shards
// at the same point (the trainer's construction and steps do): the constructor (the width),
// NextBatch, Sample, Restore (shard 0 seeks its source; every shard learns whether it could). A
// failure on shard 0 reaches the others as an error naming it, not as a hang. EvalSplit and
// LocalSample are shard 0's alone (the trainer's leader evaluates). The shared tensors are what a
// source returns: float32 [rows, d] activations and int64 token ids; shard 0's source must give
// exactly `rows_per_batch` rows per batch.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/data/activation_source.h"
#include "engine/distributed/communicator.h"

namespace saegrid {

// `source`: shard 0's source (the group's rank 0), null on the others; null on shard 0 too when
// it failed to open it, so that the others return an error instead of waiting for a batch that
// never comes. `shards` must outlive the result. `rows_per_batch`: the rows of each NextBatch
// (data.batch_size / replicas).
absl::StatusOr<std::unique_ptr<ActivationSource>> ShareAcrossShards(std::unique_ptr<ActivationSource> source,
                                                                    Communicator* shards, int64_t rows_per_batch);

}  // namespace saegrid
