// N2G on a language model (Gao et al. 2024, section 4.3): for a sample of latents, an explanation
// built (engine/eval/n2g.h) from half of each latent's top-activating held-out examples, the model
// and the SAE answering its pruning, wildcard and position checks, and scored on the sequences of
// the other half and on as many random held-out sequences (text where the latent mostly does not
// fire).
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "engine/eval/latent_firings.h"
#include "engine/eval/spliced_sae.h"
#include "engine/eval/suite.h"

namespace saegrid {

struct N2GRunOptions {
  int64_t latents = 16;   // sampled among the latents with at least two firings
  int64_t examples = 16;  // to build each explanation from, and as many held out
  uint64_t seed = 0;
  int64_t batch = 8;      // sequences per forward pass
};

// Means over the sampled latents: precision over those whose explanation predicted something in
// the scored text, recall and F1 over those that fired in it (an explanation that predicts nothing
// where the latent fires has recall 0 and F1 0; engine/eval/n2g.h's conventions).
absl::StatusOr<N2GSummary> MeasureN2G(const SplicedSae& spliced, const LatentFirings& firings,
                                      const N2GRunOptions& options);

}  // namespace saegrid
