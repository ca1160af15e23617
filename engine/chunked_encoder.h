// The encoder forward of the sparse step without the B x n pre-activation matrix: the encoder
// matmul runs over chunks of latents, each chunk is offered to the selections that consume it
// (per-row running top-k's for TopK and AuxK, a batch-wide top-M for BatchTopK, a threshold for
// JumpReLU and ReLU) and then dropped, so the step holds one B x C chunk at a time. In bfloat16
// the chunk matmul (the step's only dense work, oneDNN/AMX where the CPU has it) only ranks the
// latents: the selected pre-activations are then recomputed in float32 from the float32 master
// weights (ExactPreActivations), so the loss and the gradients see exact values.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "engine/config.h"
#include "engine/sae_types.h"
#include "kernels/running_topk.h"

namespace saegrid {

// Latents per chunk for a batch of `batch` rows: about 64 MiB of float32 pre-activations per
// chunk, a multiple of 256, and never more than `num_latents`. `configured` > 0 overrides.
int64_t EncoderChunkLatents(int64_t batch, int64_t num_latents, int64_t configured);

// Takes the encoder's chunks one after another.
class EncoderChunkConsumer {
 public:
  virtual ~EncoderChunkConsumer() = default;
  // `pre` [B, C] (the compute dtype, on the device of the inputs): the pre-activations of
  // latents [first_latent, first_latent + C).
  virtual void Offer(const torch::Tensor& pre, int64_t first_latent) = 0;
};

// Runs the encoder of `params` (x_centered [B, d] float32 = x - b_pre) chunk by chunk, offering
// every chunk to each consumer in order. Adds the matmul's seconds to `profile->encoder` and the
// consumers' to `profile->topk` when `profile` is set.
void RunChunkedEncoder(const torch::Tensor& x_centered, const SaeParameters& params,
                       ComputeDtype compute_dtype, int64_t chunk_latents, StepProfile* profile,
                       const std::vector<EncoderChunkConsumer*>& consumers);

// The exact float32 pre-activations (x_centered W_enc^T + b_enc) at `indices` [B, W] of `params`,
// without gradient.
torch::Tensor ExactPreActivations(const torch::Tensor& x_centered, const SaeParameters& params,
                                  const torch::Tensor& indices);

struct EncoderCandidates {
  Selection main;               // [B, main_width], values sorted descending
  std::optional<Selection> aux;  // [B, aux_width] over the dead latents; -inf pads missing slots
};

// Per-token running top-k's over the chunks: the main selection of `main_width` (0: none) and,
// over the dead latents (`dead_mask` [n] bool, may be undefined), AuxK's of `aux_width` (0: none).
// On an accelerator AuxK offers each chunk with its live latents masked to -inf instead of a
// host-side list of the dead ones, so nothing is copied to the host.
class PerTokenTopK final : public EncoderChunkConsumer {
 public:
  PerTokenTopK(int64_t batch, int64_t main_width, const torch::Tensor& dead_mask, int64_t aux_width,
               torch::Device device);
  void Offer(const torch::Tensor& pre, int64_t first_latent) override;
  EncoderCandidates Finish() const;

 private:
  kernels::RunningTopK main_;
  kernels::RunningTopK aux_;
  bool with_aux_;
  bool dead_by_position_ = false;
  torch::Tensor dead_mask_;
  torch::Tensor dead_latents_;
  int64_t dead_cursor_ = 0;
};

// A selection's values recomputed exactly (ExactPreActivations) and re-sorted descending;
// -inf padding stays padding, at the end. What a bfloat16 ranking is followed by.
Selection RecomputeExactly(const torch::Tensor& x_centered, const SaeParameters& params, const Selection& s);

// The per-token selection of TopK: `params` hold this shard's latents, and latent ids in the
// result are local to the shard. `dead_mask` ([n] bool over the shard's latents, may be
// undefined) feeds the AuxK selection of `aux_width` (0: none). Everything runs on the device of
// `x_centered`, and on an accelerator nothing is copied to the host: the chunks' candidates are
// merged on the device (kernels/running_topk.h), and AuxK offers each chunk with its live latents
// masked to -inf instead of a host-side list of the dead ones. In bfloat16 the values are
// recomputed exactly and re-sorted.
EncoderCandidates SelectByChunkedEncoder(const torch::Tensor& x_centered, const SaeParameters& params,
                                         int64_t main_width, const torch::Tensor& dead_mask,
                                         int64_t aux_width, ComputeDtype compute_dtype,
                                         int64_t chunk_latents, StepProfile* profile);

}  // namespace saegrid
