// Activations made on the fly: a language model run over a token file inside the trainer, the
// activations of one hookpoint fed to training through a shuffle buffer.
//
// The order is a pure function of the seed, like ActivationStream's, so that the data cursor
// (epoch, rows of the epoch consumed) is all the state a resume needs: epoch e permutes the
// training sequences (seed, e); consecutive groups of `shuffle_sequences` of them form one
// shuffle buffer, whose activations (minus the excluded positions) are permuted together
// (seed, e, group). A restored cursor recomputes the model only for the group it falls in; the
// rows come out bitwise equal when the thread count is the same (one thread: always).
//
// A producer thread runs the model one group ahead of the trainer, so that the model's forward
// and the SAE step overlap. Replica r of R keeps rows [r B/R, (r+1) B/R) of every global batch of
// B rows, as the file-backed stream does, so the batches do not depend on the number of replicas;
// the cost is that every replica runs the model over the whole buffer (R times the model work of
// one process). The held-out split is the token file's last ceil(eval_fraction * N) sequences.
#pragma once

#include <torch/types.h>

#include <memory>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/data/activation_source.h"
#include "engine/lm/language_model.h"
#include "engine/lm/token_file.h"

namespace saegrid {

// What data.language_model names, opened and checked against each other: the model (on
// `device`), its hookpoint, and the token file read with the model's vocabulary. Shared by the
// on-the-fly source and `saegrid harvest`. Errors name the field or the file
// (data.language_model.hookpoint: ..., a missing tensor of the model, ...).
struct LanguageModelData {
  std::unique_ptr<LanguageModel> model;
  std::unique_ptr<TokenFile> tokens;
  Hookpoint hook;
};
// The held-out sequences of a token file of `num_sequences`: the last ceil(eval_fraction * N), at
// least one and leaving one for training when eval_fraction > 0 and N > 1; none otherwise.
struct SequenceRange {
  int64_t first = 0;
  int64_t count = 0;
};
SequenceRange HeldOutSequences(int64_t num_sequences, double eval_fraction);

absl::StatusOr<LanguageModelData> OpenLanguageModelData(const LanguageModelDataConfig& config, torch::Device device);

// Opens config.language_model (OpenLanguageModelData) for one replica. An id out of range is an
// error with its file and offset when the batch that holds it is made.
absl::StatusOr<std::unique_ptr<ActivationSource>> OpenLanguageModelSource(const DataConfig& config,
                                                                         int replica, int num_replicas,
                                                                         torch::Device model_device,
                                                                         bool pin_memory);

}  // namespace saegrid
