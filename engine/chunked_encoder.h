// The encoder forward of the sparse step without the B x n pre-activation matrix: the encoder
// matmul runs over chunks of latents, each chunk is offered to running per-row top-k's (the main
// selection and, over the dead latents, AuxK's) and then dropped, so the step holds one B x C
// chunk at a time. In bfloat16 the chunk matmul (the step's only dense work, oneDNN/AMX where the
// CPU has it) only ranks the latents: the selected pre-activations are then recomputed in
// float32 from the float32 master weights, so the loss and the gradients see exact values.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <optional>

#include "engine/config.h"
#include "engine/sae_model.h"

namespace saegrid {

struct EncoderCandidates {
  Selection main;               // [B, main_width], values sorted descending
  std::optional<Selection> aux;  // [B, aux_width] over the dead latents; -inf pads missing slots
};

// Latents per chunk for a batch of `batch` rows: about 64 MiB of float32 pre-activations per
// chunk, a multiple of 256, and never more than `num_latents`. `configured` > 0 overrides.
int64_t EncoderChunkLatents(int64_t batch, int64_t num_latents, int64_t configured);

// `x_centered` is x - b_pre [B, d] float32; `params` hold this shard's latents. Latent ids in the
// result are local to the shard. `dead_mask` ([n] bool over the shard's latents, may be
// undefined) feeds the AuxK selection of `aux_width` (0: none). Everything runs on the device of
// `x_centered`, and on an accelerator nothing is copied to the host: the chunks' candidates are
// merged on the device (kernels/running_topk.h), and AuxK offers each chunk with its live latents
// masked to -inf instead of a host-side list of the dead ones. Adds the matmul's seconds to
// `profile->encoder` and the selection's to `profile->topk` when `profile` is set (on an
// accelerator these are launch times unless the caller synchronises).
EncoderCandidates SelectByChunkedEncoder(const torch::Tensor& x_centered, const SaeParameters& params,
                                         int64_t main_width, const torch::Tensor& dead_mask,
                                         int64_t aux_width, ComputeDtype compute_dtype,
                                         int64_t chunk_latents, StepProfile* profile);

}  // namespace saegrid
