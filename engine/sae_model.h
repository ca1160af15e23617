// The SAE itself: parameters, initialisation, and the training forward pass in two
// implementations (sparse kernels, and a dense autograd reference used by the tests).
//
// Conventions (docs/training.md): TopK keeps the k largest pre-activations and then applies ReLU
// (OpenAI's order); the loss is FVU on the (optionally layer-normalised) inputs plus
// auxk_alpha * AuxK for TopK, or FVU + l1_coefficient * mean per-token L1 for ReLU.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/config.h"

namespace saegrid {

struct SaeParameters {
  torch::Tensor w_enc;  // [n, d]
  torch::Tensor b_enc;  // [n]
  torch::Tensor w_dec;  // [n, d], unit-norm rows
  torch::Tensor b_pre;  // [d]

  std::vector<torch::Tensor> All() const { return {w_enc, b_enc, w_dec, b_pre}; }
  static const std::vector<std::string>& Names();
  SaeParameters Clone() const;
};

enum class ComputePath { kSparse, kDenseReference };

// Latents selected per token: [B, K] indices and their pre-activations.
struct Selection {
  torch::Tensor indices;
  torch::Tensor values;
};

struct ForwardOutput {
  torch::Tensor loss;  // differentiable scalar
  // Detached scalars of this batch.
  double fvu = 0;
  double mse = 0;
  double auxk_loss = 0;
  double l1_loss = 0;
  double l0 = 0;  // mean active latents per token
  int64_t num_dead = 0;
  // The main selection (detached), for dead-latent tracking and metrics. acts = ReLU(values).
  torch::Tensor indices;
  torch::Tensor acts;
};

class SaeModel {
 public:
  // `config` must be resolved (d_in, num_latents, k_aux set; see ResolveModelConfig).
  explicit SaeModel(const ModelConfig& config);

  // Decoder rows random unit (or orthogonal), encoder = decoder transpose, b_enc = 0 and
  // b_pre = geometric median of `sample` (already normalised, see NormalizeInputs).
  void Initialize(const torch::Tensor& sample, uint64_t seed);

  // Per-token layer normalisation when configured; identity otherwise.
  torch::Tensor NormalizeInputs(const torch::Tensor& x) const;

  // One training forward pass on normalised inputs. `dead_mask` [n] bool marks dead latents for
  // AuxK (may be undefined: no AuxK). Both paths select the same latents.
  ForwardOutput TrainingForward(const torch::Tensor& x, const torch::Tensor& dead_mask,
                                ComputePath path) const;

  // Inference: the selected latents of normalised inputs, and their reconstruction.
  Selection Encode(const torch::Tensor& x, const SaeParameters& params) const;
  torch::Tensor Decode(const Selection& selection, const SaeParameters& params) const;

  // Keeps decoder rows at unit norm: remove the gradient's component parallel to each row
  // (before the optimiser step) and renormalise the rows (after it).
  void ProjectDecoderGradient() const;
  void RenormalizeDecoder() const;

  const ModelConfig& config() const { return config_; }
  SaeParameters& params() { return params_; }
  const SaeParameters& params() const { return params_; }

 private:
  torch::Tensor PreActivations(const torch::Tensor& x, const SaeParameters& p) const;
  Selection SelectMain(const torch::Tensor& pre) const;
  std::optional<Selection> SelectAux(const torch::Tensor& pre, const torch::Tensor& dead_mask) const;

  ModelConfig config_;
  SaeParameters params_;
};

// Fills the derived fields of a model config: num_latents from expansion_factor and k_aux.
ModelConfig ResolveModelConfig(ModelConfig config, int64_t d_in);

// Weiszfeld iterations for the geometric median of the rows of `points` [N, d].
torch::Tensor GeometricMedian(const torch::Tensor& points, int max_iterations = 100,
                              double tolerance = 1e-6);

// The power of two nearest to `value` (k_aux default: d_in / 2).
int64_t NearestPowerOfTwo(double value);

}  // namespace saegrid
