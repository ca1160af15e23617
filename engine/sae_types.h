// The value types the SAE's forward pass shares with the chunked encoder, the activation
// functions (engine/activation/) and the sharded selection: parameters, a selection of latents,
// how a sharded pass reaches its peers, and the per-phase profile.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "engine/distributed/communicator.h"

namespace saegrid {

struct SaeParameters {
  torch::Tensor w_enc;  // [n, d]
  torch::Tensor b_enc;  // [n]
  torch::Tensor w_dec;  // [n, d], unit-norm rows
  torch::Tensor b_pre;  // [d]
  // JumpReLU only (undefined otherwise): the per-latent thresholds' logarithm [n], trained.
  torch::Tensor log_threshold;

  // The trained tensors in a fixed order: the four above, then log_threshold when defined.
  std::vector<torch::Tensor> All() const;
  // The names of All()'s tensors by position: W_enc, b_enc, W_dec, b_pre, log_threshold.
  static const std::vector<std::string>& Names();
  // Whether All()[i] has one row per latent (everything but b_pre).
  static bool IsPerLatent(size_t i) { return i != 3; }
  // The unit-norm rows flag of All()'s tensors (W_dec only), for the optimiser.
  std::vector<bool> UnitNormRows() const;
  SaeParameters Clone() const;
  // Rows [begin, begin + count) of the per-latent tensors; b_pre whole.
  SaeParameters Latents(int64_t begin, int64_t count) const;
  // Assigns All()[i] = tensors[i] (the order of All(); 4 or 5 tensors).
  static SaeParameters FromList(const std::vector<torch::Tensor>& tensors);
};

enum class ComputePath { kSparse, kDenseReference };

// Seconds of one training step by phase, for the benchmark.
struct StepProfile {
  double encoder = 0;     // the dense pre-activation matmul
  double topk = 0;        // local selection and the global cut
  double allgather = 0;   // candidate values
  double decode = 0;      // encoder at the selected latents, sparse decode, loss
  double allreduce = 0;   // partial reconstructions, variances, gradients, metrics
  double backward = 0;
  double optimizer = 0;   // clipping, Adam, decoder renormalisation, EMA, dead latents
  double data = 0;        // waiting for the batch (a model run on the fly, or a file prefetch)
};

// How a latent-sharded, data-parallel forward pass reaches the other ranks.
struct ParallelForward {
  Communicator* shards = nullptr;    // this replica's shard group (size S)
  Communicator* replicas = nullptr;  // the ranks holding this shard (size R)
  double capacity_factor = 2.0;      // candidates a shard offers, relative to its fair share
  bool exact = false;                // offer every candidate that could make the global cut
  int64_t k_aux_in = 0;              // AuxK candidates each shard offers
  int64_t dead_total = 0;            // dead latents over all shards
  int64_t k = 0;                     // this step's k (the k schedule); 0: the model's k
  StepProfile* profile = nullptr;    // accumulates the forward's phases when set
};

// Latents selected per token: [B, W] indices and their pre-activations. `keep` [B, W] bool, when
// defined, marks the slots in use: selections whose width varies by token (BatchTopK, JumpReLU,
// ReLU, a sharded cut) are padded to the widest row, and a padded slot never activates.
struct Selection {
  torch::Tensor indices;
  torch::Tensor values;
  torch::Tensor keep;
};

}  // namespace saegrid
