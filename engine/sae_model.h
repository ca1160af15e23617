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

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/distributed/communicator.h"

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

// Seconds of one training step by phase, for the benchmark.
struct StepProfile {
  double encoder = 0;     // the dense pre-activation matmul
  double topk = 0;        // local top-k and the global cut
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
  int64_t k_in = 0;                  // main candidates each shard offers
  int64_t k_aux_in = 0;              // AuxK candidates each shard offers
  int64_t dead_total = 0;            // dead latents over all shards
  StepProfile* profile = nullptr;    // accumulates the forward's phases when set
};

// Latents selected per token: [B, K] indices and their pre-activations.
struct Selection {
  torch::Tensor indices;
  torch::Tensor values;
};

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
    kOverflowTokens,  // tokens whose sharded selection may have been truncated
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
  double overflow_tokens = 0;
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
  int64_t num_dead = 0;
  double overflow_rate = 0;  // tokens whose sharded selection may have been truncated
  // The main selection (detached), for dead-latent tracking and metrics. acts = ReLU(values).
  torch::Tensor indices;
  torch::Tensor acts;
};

class SaeModel {
 public:
  // `config` must be resolved (d_in, num_latents, k_aux set; see ResolveModelConfig). The model
  // holds shard `shard` of `shards`: latents [shard n/S, (shard+1) n/S) (n divisible by S).
  // Parameters live on `device`.
  explicit SaeModel(const ModelConfig& config, int64_t shard = 0, int64_t shards = 1,
                    torch::Device device = torch::kCPU);
  // A model without parameters of its own, for Encode/Decode with given parameters.
  static SaeModel ForInference(const ModelConfig& config);

  // Decoder rows random unit (or orthogonal), encoder = decoder transpose, b_enc = 0 and
  // b_pre = geometric median of `sample` (already normalised, see NormalizeInputs). A shard
  // takes its rows of the unsharded initialisation, so every layout starts from the same SAE.
  void Initialize(const torch::Tensor& sample, uint64_t seed);

  // Per-token layer normalisation, or the dataset-wide constant, when configured; identity
  // otherwise.
  torch::Tensor NormalizeInputs(const torch::Tensor& x) const;
  // kDatasetConstant: the constant that makes E||x||^2 = d_in over `sample` (raw inputs), and
  // setting it (fitted at the start, restored on resume).
  static double FitInputScale(const torch::Tensor& sample);
  void set_input_scale(double scale) { config_.input_scale = scale; }

  // One training forward pass on normalised inputs. `dead_mask` [n] bool marks dead latents for
  // AuxK (may be undefined: no AuxK). Both paths select the same latents. The metrics are
  // finalised (read to the host).
  ForwardOutput TrainingForward(const torch::Tensor& x, const torch::Tensor& dead_mask,
                                ComputePath path) const;
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

  // Inference: the selected latents of normalised inputs, and their reconstruction.
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

 private:
  SaeModel() = default;
  absl::StatusOr<ForwardOutput> Forward(const torch::Tensor& x, const torch::Tensor& dead_mask,
                                        ComputePath path, const ParallelForward* parallel) const;
  torch::Tensor PreActivations(const torch::Tensor& x, const SaeParameters& p) const;
  Selection SelectMain(const torch::Tensor& pre) const;
  std::optional<Selection> SelectAux(const torch::Tensor& pre, const torch::Tensor& dead_mask) const;

  ModelConfig config_;
  int64_t latent_begin_ = 0;
  int64_t latent_count_ = 0;
  SaeParameters params_;
};

// Reads `out.sums` (after they were summed over ranks) to the host (one counted read,
// engine/host_reads.h) and fills host_sums, fvu, mse, auxk_loss, l1_loss, l0 and overflow_rate.
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
