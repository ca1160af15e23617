// One SAE architecture's activation function, behind one interface: which latents a training step
// selects (and, sharded, how the shards' candidates are cut), how the selected pre-activations
// become activations, the sparsity penalty, the prefixes the reconstruction loss is summed over,
// how a token is encoded at inference, and what the SAE exports as. SaeModel (engine/sae_model.h)
// runs the phases common to every architecture around these: the encoder, the sparse decode, the
// reconstruction and AuxK losses.
//
// One file per architecture (topk.cc, batch_topk.cc, jumprelu.cc, matryoshka.cc, relu.cc);
// adding one touches its own file, MakeActivationFunction, its config entry and its tests.
//
// Conventions every implementation keeps:
// - Latent ids in a Selection are local to the shard ([0, latent_count)).
// - A padded slot (keep false) has no activation and no gradient.
// - The dense reference (DenseActivations) is written independently of the sparse path (its
//   gradients come from LibTorch autograd on the whole [B, n] matrix), so that the gradient
//   equivalence tests compare two implementations, not one with itself.
#pragma once

#include <torch/types.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/sae_types.h"

namespace saegrid {

// What a training step's selection phase gets.
struct SelectionInputs {
  torch::Tensor x_centered;  // [B, d] float32: normalised inputs minus b_pre (no gradient)
  const SaeParameters* params = nullptr;  // this shard's
  int64_t k = 0;                          // this step's k (the k schedule)
  // Sharded: the shard group (size > 1), else null; and how many candidates to offer.
  Communicator* shards = nullptr;
  double capacity_factor = 2.0;
  bool exact = false;
  // AuxK over the dead latents: `aux_width` > 0 asks for [B, aux_width] per-token candidates
  // (ids of dead latents, -inf padding) alongside the main selection.
  torch::Tensor dead_mask;
  int64_t aux_width = 0;
  StepProfile* profile = nullptr;
};

struct TrainingSelection {
  // The latents that activate: values are their pre-activations (exact float32, no gradient);
  // keep marks the slots in use (undefined: all).
  Selection main;
  std::optional<Selection> aux;  // AuxK's per-token candidates (sharded: not yet cut)
  // Sharded selections: tokens whose selection may have been truncated by the capacity factor (a
  // shard's last offered candidate made the cut), and those whose selection was (a value the
  // shard did not offer would have made it). 0-d int64 on the device.
  torch::Tensor possibly_truncated;
  torch::Tensor truncated;
};

// What the checkpoint exports for an architecture (engine/checkpoint.cc writes it).
struct ActivationExport {
  std::string saelens_architecture;  // "topk", "jumprelu", "standard"
  // Whether EleutherAI sparsify's loader accepts the architecture (its cfg.json "activation":
  // only "topk"); the sparsify layout is written only then.
  bool sparsify_loadable = false;
  // Per-latent thresholds [n] in the exported (raw-activation) units, for "jumprelu"; undefined
  // otherwise.
  torch::Tensor threshold;
};

class ActivationFunction {
 public:
  virtual ~ActivationFunction() = default;

  // The training selection of this shard's latents (sharded: already cut globally, which may
  // take collectives on `in.shards`).
  virtual absl::StatusOr<TrainingSelection> Select(const SelectionInputs& in) const = 0;

  // The activations of the selected pre-activations `pre` [B, W] (differentiable) at the latents
  // `indices` [B, W] of `params`. Default: ReLU.
  virtual torch::Tensor Activate(const torch::Tensor& pre, const torch::Tensor& indices,
                                 const SaeParameters& params) const;

  // The sparsity term for this shard's activations of `rows_total` rows (the global batch's:
  // penalties are means per token), padded slots already masked out of `pre` and `acts`.
  // Default: none.
  // A penalty that is not a sum over latents (JumpReLU's target L0) totals over `shards` (null:
  // unsharded).
  // Returns the differentiable scalar added to the loss (undefined: none).
  virtual absl::StatusOr<torch::Tensor> Penalty(const torch::Tensor& pre, const torch::Tensor& acts,
                                                  const torch::Tensor& indices, const SaeParameters& params,
                                                  int64_t rows_total, Communicator* shards) const;
  // The penalty's value from the batch's mean per-token L1 and L0 (for the reported loss).
  virtual double PenaltyValue(double l1_per_token, double l0_per_token) const { return 0; }

  // The dense reference of Select + Activate + Penalty on the whole pre-activation matrix `pre`
  // [B, n] (unsharded): the activations z [B, n] and the penalty (undefined: none), both by
  // LibTorch autograd.
  virtual std::pair<torch::Tensor, torch::Tensor> DenseActivations(const torch::Tensor& pre,
                                                                   const SaeParameters& params,
                                                                   int64_t k) const = 0;

  // The dictionary sizes the reconstruction loss is averaged over, increasing, the last the
  // whole dictionary (Matryoshka's nested prefixes); {num_latents} otherwise.
  virtual std::vector<int64_t> Prefixes() const { return {config_.num_latents}; }

  // Whether the AuxK loss applies (the TopK family); the trainer skips it when auxk_alpha is 0.
  virtual bool UsesAuxK() const { return false; }
  // Whether k applies (and the k schedule).
  virtual bool UsesK() const { return false; }
  // Whether inference uses ModelConfig::inference_threshold, fitted during training from the
  // smallest kept activation of each batch (BatchTopK, Matryoshka).
  virtual bool FitsInferenceThreshold() const { return false; }

  // Inference on normalised inputs minus b_pre: the active latents (values >= 0, padded
  // slots 0) of `params` (the whole model).
  virtual Selection Encode(const torch::Tensor& x_centered, const SaeParameters& params) const = 0;

  // The export of `published` (the whole model) for inputs scaled by `input_scale` in training.
  virtual ActivationExport Export(const SaeParameters& published, double input_scale) const = 0;

  const ModelConfig& config() const { return config_; }
  // The fitted threshold changes during training, in place (no reference to this object is
  // invalidated).
  void set_inference_threshold(double threshold) { config_.inference_threshold = threshold; }

 protected:
  explicit ActivationFunction(const ModelConfig& config) : config_(config) {}
  ModelConfig config_;
};

// The activation function of `config.architecture`.
std::unique_ptr<ActivationFunction> MakeActivationFunction(const ModelConfig& config);

// The k of step `step` (0-based) under the k schedule: k_initial decreasing linearly to k over
// the first k_schedule_steps steps; k itself without a schedule.
int64_t ScheduledK(const ModelConfig& config, int64_t step);

// The next inference threshold of BatchTopK and Matryoshka: the smallest kept activation of the
// batch `batch_min` folded into the moving average `current` with `decay` (the first batch, with
// `first`, sets it). A batch that kept nothing (batch_min infinite) leaves it unchanged.
double NextInferenceThreshold(double current, double batch_min, double decay, bool first);

}  // namespace saegrid
