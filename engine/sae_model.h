// The SAE itself: parameters, initialisation, and the training forward pass in two
// implementations (sparse kernels, and a dense autograd reference used by the tests).
//
// The forward pass runs in three phases: select (the architecture's activation function,
// engine/activation/, picks the latents, sharded or not), decode (the encoder at the selected
// latents, the activation, the sparse decode summed over the shards) and loss (FVU on the
// (optionally normalised) inputs, summed over Matryoshka's prefixes, plus auxk_alpha * AuxK for
// the TopK family and the architecture's sparsity penalty). docs/training.md has the conventions.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/activation/activation_function.h"
#include "engine/distributed/communicator.h"
#include "engine/sae_types.h"

namespace saegrid {

// Statistics of one forward pass, as the host reads them (FinalizeMetrics). On the device they
// are one float64 tensor (ForwardOutput::sums) indexed by Index, so that a step reads them, when
// it reads them at all, in one copy; the first kAdditive entries add over ranks, so that a
// sharded or data-parallel step can sum them before they become metrics.
struct ForwardSums {
  enum Index : int64_t {
    kErrorSq,         // sum ||x - x_hat||^2 over this replica's rows
    kAuxErrorSq,      // sum ||residual - e_hat||^2 (AuxK)
    kL1,              // sum of this shard's activations
    kActive,          // this shard's activations > 0
    kPossiblyTruncated,  // tokens whose sharded selection may have been truncated
    kTruncated,          // tokens whose sharded selection was truncated
    kPrefixErrorSq,      // Matryoshka: sum ||x - x_hat_m||^2 over the prefixes but the whole
    kTokens,          // this replica's rows
    kAdditive,
    kVariance = kAdditive,  // total variance of the inputs over the global batch
    kResidualVariance,      // of the residual, for AuxK (0: no AuxK this step)
    kCount
  };
  double error_sq = 0;
  double aux_error_sq = 0;
  double l1 = 0;
  double active = 0;
  double possibly_truncated = 0;
  double truncated = 0;
  double prefix_error_sq = 0;
  double tokens = 0;
  double variance = 0;
  double residual_variance = 0;

  // From a host tensor of kCount float64 values.
  static ForwardSums FromHost(const torch::Tensor& host);
};

struct ForwardOutput {
  torch::Tensor loss;  // differentiable scalar
  // [ForwardSums::kCount] float64 on the device. Nothing in the forward pass reads it on the
  // host; FinalizeMetrics does, when the caller wants the figures.
  torch::Tensor sums;
  ForwardSums host_sums;  // filled by FinalizeMetrics
  // Sharded runs: the leaf whose gradient is this shard's part of the encoder's b_pre gradient,
  // to be summed over the shards and added to b_pre's gradient (see ReduceShardGradients).
  torch::Tensor encoder_b_pre;
  // Metrics of the batch, from the sums (FinalizeMetrics).
  double fvu = 0;
  double mse = 0;
  double auxk_loss = 0;
  double l1_loss = 0;
  double l0 = 0;  // mean active latents per token
  double prefix_fvu = 0;  // Matryoshka: the FVUs of the prefixes but the whole, summed
  int64_t num_dead = 0;
  double overflow_rate = 0;   // tokens whose sharded selection may have been truncated
  double truncated_rate = 0;  // tokens whose sharded selection was truncated
  // The main selection (detached), for dead-latent tracking and metrics; padded slots have
  // activation 0.
  torch::Tensor indices;
  torch::Tensor acts;
  // BatchTopK and Matryoshka: this shard's smallest positive kept activation (0-d float32 on the
  // device, +inf when none), from which the trainer fits the inference threshold.
  torch::Tensor min_kept_activation;
};

class SaeModel {
 public:
  // `config` must be resolved (d_in, num_latents, k_aux set; see ResolveModelConfig). The model
  // holds shard `shard` of `shards`: latents [shard n/S, (shard+1) n/S) (n divisible by S).
  // Parameters live on `device`.
  explicit SaeModel(const ModelConfig& config, int64_t shard = 0, int64_t shards = 1,
                    torch::Device device = torch::kCPU);
  // Copies share the parameter tensors (as LibTorch tensors do) but not the activation function.
  SaeModel(const SaeModel& other);
  SaeModel& operator=(const SaeModel& other);
  SaeModel(SaeModel&&) = default;
  SaeModel& operator=(SaeModel&&) = default;
  // A model without parameters of its own, for Encode/Decode with given parameters.
  static SaeModel ForInference(const ModelConfig& config);

  // Decoder rows random unit (or orthogonal), encoder = decoder transpose, b_enc = 0,
  // b_pre = geometric median of `sample` (already normalised, see NormalizeInputs) and JumpReLU's
  // thresholds at jumprelu_initial_threshold. A shard
  // takes its rows of the unsharded initialisation, so every layout starts from the same SAE.
  void Initialize(const torch::Tensor& sample, uint64_t seed);

  // Per-token layer normalisation, or the dataset-wide constant, when configured; identity
  // otherwise.
  torch::Tensor NormalizeInputs(const torch::Tensor& x) const;
  // kDatasetConstant: the constant that makes E||x||^2 = d_in over `sample` (raw inputs), and
  // setting it (fitted at the start, restored on resume).
  static double FitInputScale(const torch::Tensor& sample);
  void set_input_scale(double scale) { config_.input_scale = scale; }
  // BatchTopK and Matryoshka: the fitted inference threshold (ModelConfig::inference_threshold).
  void set_inference_threshold(double threshold);

  // One training forward pass on normalised inputs. `dead_mask` [n] bool marks dead latents for
  // AuxK (may be undefined: no AuxK). Both paths select the same latents. `k` is the step's k
  // (0: the model's). The metrics are finalised (read to the host).
  ForwardOutput TrainingForward(const torch::Tensor& x, const torch::Tensor& dead_mask,
                                ComputePath path, int64_t k = 0) const;
  // The same pass for one rank of a sharded / data-parallel gang (sparse path): the global top-k
  // from the shards' candidates, partial reconstructions summed over the shards, and the loss
  // normalised by the global batch's variance and scaled so that averaging the gradients over
  // the replicas gives the gradient of the whole batch. `dead_mask` covers this shard, and
  // `parallel.dead_total` must count the dead latents of every shard. The metrics are not read:
  // the pass queues its work and returns (FinalizeMetrics reads them).
  absl::StatusOr<ForwardOutput> ParallelTrainingForward(const torch::Tensor& x,
                                                        const torch::Tensor& dead_mask,
                                                        const ParallelForward& parallel) const;
  // After backward in a sharded run: adds the shards' encoder b_pre gradients into b_pre.
  absl::Status ReduceShardGradients(const ForwardOutput& out, Communicator* shards) const;

  // Inference: the active latents of normalised inputs (padded per token; values >= 0, padded
  // slots 0), and their reconstruction.
  Selection Encode(const torch::Tensor& x, const SaeParameters& params) const;
  torch::Tensor Decode(const Selection& selection, const SaeParameters& params) const;

  // Keeps decoder rows at unit norm: remove the gradient's component parallel to each row
  // (before the optimiser step) and renormalise the rows (after it).
  void ProjectDecoderGradient() const;
  void RenormalizeDecoder() const;

  const ModelConfig& config() const { return config_; }
  int64_t latent_begin() const { return latent_begin_; }
  int64_t latent_count() const { return latent_count_; }
  SaeParameters& params() { return params_; }
  const SaeParameters& params() const { return params_; }
  const ActivationFunction& activation() const { return *activation_; }

 private:
  SaeModel() = default;
  absl::StatusOr<ForwardOutput> Forward(const torch::Tensor& x, const torch::Tensor& dead_mask,
                                        ComputePath path, const ParallelForward* parallel) const;

  ModelConfig config_;
  std::unique_ptr<ActivationFunction> activation_;  // made from config_ (copies make their own)
  int64_t latent_begin_ = 0;
  int64_t latent_count_ = 0;
  SaeParameters params_;
};

// Reads `out.sums` (after they were summed over ranks) to the host (one counted read,
// engine/host_reads.h) and fills host_sums, fvu, mse, auxk_loss, l1_loss, l0, prefix_fvu and the
// truncation rates.
void FinalizeMetrics(ForwardOutput& out, int64_t d_in);
// The same from out.host_sums, already read (the trainer packs the read with others).
void MetricsFromHostSums(ForwardOutput& out, int64_t d_in);

// Fills the derived fields of a model config: num_latents from expansion_factor and k_aux.
ModelConfig ResolveModelConfig(ModelConfig config, int64_t d_in);

// Weiszfeld iterations for the geometric median of the rows of `points` [N, d].
torch::Tensor GeometricMedian(const torch::Tensor& points, int max_iterations = 100,
                              double tolerance = 1e-6);

// The power of two nearest to `value` (k_aux default: d_in / 2).
int64_t NearestPowerOfTwo(double value);

}  // namespace saegrid
