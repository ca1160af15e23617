// The training loop of one SAE: data, sparse step, Adam with schedule, clipping and EMA,
// dead-latent tracking, periodic checkpoints, resume, and the final evaluation. One Trainer is
// one rank of a gang (engine/distributed/gang.h): a single process is a gang of one.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "base/error_kind.h"
#include "engine/config.h"
#include "engine/data/activation_source.h"
#include "engine/dead_latents.h"
#include "engine/distributed/gang.h"
#include "engine/evaluation.h"
#include "engine/optimizer.h"
#include "engine/sae_model.h"

namespace saegrid {

struct TrainerState;

struct StepMetrics {
  int64_t step = 0;  // steps completed
  int64_t total_steps = 0;
  int64_t tokens = 0;  // tokens trained on so far
  // The objective: FVU (summed over Matryoshka's prefixes) + auxk_alpha * AuxK (the TopK family)
  // + the architecture's sparsity penalty (ReLU's L1, JumpReLU's L0).
  double loss = 0;
  double fvu = 0, mse = 0, auxk_loss = 0, l1_loss = 0, l0 = 0;
  int64_t k = 0;  // this step's k (the k schedule), for architectures that use k
  // Sharded runs: tokens of this step (and of the run so far) whose selection may have been
  // truncated by the capacity factor (a shard's last offered candidate made the cut), and those
  // whose selection was (a candidate a shard did not offer would have made it). BatchTopK counts
  // the tokens of the batches whose cut was.
  int64_t overflow_tokens = 0;
  double overflow_rate = 0;
  int64_t overflow_tokens_total = 0;
  double overflow_rate_total = 0;
  int64_t truncated_tokens = 0;
  double truncated_rate = 0;
  int64_t truncated_tokens_total = 0;
  double truncated_rate_total = 0;
  double inference_threshold = -1;  // BatchTopK and Matryoshka: the fitted threshold so far
  int64_t num_dead = 0;
  double dead_fraction = 0;
  double lr = 0;
  double grad_norm = 0;
  double step_seconds = 0;
  double tokens_per_second = 0;  // this step
  StepProfile profile;           // where this rank's step time went
  // Whether the figures above (loss to grad_norm, num_dead, dead_fraction, overflow_rate) were
  // read this step: the training loop reads them only at the steps that report them, so that a
  // GPU step does not wait for the device (Trainer::Train). step, tokens, lr, the overflow
  // counts and the timings are always set.
  bool has_figures = true;
};

class TrainingObserver {
 public:
  virtual ~TrainingObserver() = default;
  virtual void OnStart(int64_t step, int64_t total_steps, bool resumed) {}
  virtual void OnStep(const StepMetrics& metrics) {}
  virtual void OnCheckpoint(const std::string& dir, int64_t step) {}
  virtual void OnEvaluation(const EvalResult& result) {}
};

class Trainer {
 public:
  // `gang` is this rank's gang (JoinGang); null: a single process. An error that comes from
  // restoring the newest checkpoint of checkpoint.output_dir is marked IsRestoreFailure()
  // (base/error_kind.h), whatever its code.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const TrainConfig& config,
                                                         std::unique_ptr<Gang> gang = nullptr);

  // Trains until total_tokens (or RequestStop), checkpointing every checkpoint.every_steps and
  // at the end, where it also evaluates. Returns the final evaluation (on the leader, rank 0;
  // the other ranks return an empty result).
  absl::StatusOr<EvalResult> Train(TrainingObserver* observer = nullptr);
  // One step with all its figures (the training loop reads them only at reporting steps).
  absl::StatusOr<StepMetrics> Step();
  // One step; the figures of StepMetrics are read from the device only when `figures`. A step
  // reads the device once (engine/host_reads.h), plus once on the first step of a run and once
  // more with gradient clipping.
  absl::StatusOr<StepMetrics> Step(bool figures);
  // Reconstruction figures on the held-out rows (every rank takes part; rank 0 gets them), and with
  // `run_suite` the evaluations of evaluation.run on rank 0 (engine/eval/suite.h): a failure of
  // one of those is reported in the result's evaluations, not as an error of the run.
  absl::StatusOr<EvalResult> Evaluate(bool run_suite = false);
  absl::StatusOr<std::string> WriteCheckpointNow(const EvalResult* evaluation);
  // Safe from another thread or a signal handler: the loop checkpoints and returns after the
  // current step.
  void RequestStop() { stop_requested_.store(true); }

  int64_t step() const { return step_; }
  int64_t total_steps() const { return total_steps_; }
  int64_t tokens() const { return tokens_; }
  bool resumed() const { return resumed_; }
  const std::string& resumed_from() const { return resumed_from_; }
  const SaeModel& model() const { return *model_; }
  const TrainConfig& config() const { return config_; }
  int threads() const { return threads_; }
  // Where the model, its optimizer state, the batches and the evaluation live.
  const torch::Device& device() const { return device_; }
  // The weights evaluation and publication use: the EMA when enabled, else the raw weights;
  // this rank's shard of them.
  SaeParameters PublishedWeights() const;
  bool is_leader() const { return gang_->layout.rank == 0; }
  const ParallelLayout& layout() const { return gang_->layout; }
  // The per-token candidates each shard offers at the model's k (TopK's k_in).
  int64_t candidates_per_shard() const { return candidates_per_shard_; }
  // How busy the data source's producer was (the on-the-fly model) and how long steps waited for it.
  SourceActivity data_activity() const { return source_->activity(); }
  // Bytes this rank has sent through its communicators so far.
  int64_t bytes_sent() const;

 private:
  Trainer() = default;
  absl::Status Resume(const std::string& step_dir);
  absl::Status CheckSameStart();
  absl::StatusOr<SaeParameters> GatherPublishedWeights();
  // Evaluate's parts: the reconstruction figures (rank 0 also gets the published weights), and the
  // evaluations of evaluation.run on rank 0 while the other ranks wait in short all-reduces.
  absl::StatusOr<EvalResult> EvaluateReconstruction(std::optional<SaeParameters>* leader_weights);
  absl::Status RunSuiteWhilePeersWait(const SaeParameters* weights, EvalResult* result);
  absl::Status GatherStateSlicesToLeader(const SaeParameters& raw, const TrainerState& state);

  TrainConfig config_;
  std::unique_ptr<Gang> gang_;
  ParallelForward parallel_;
  int threads_ = 1;
  torch::Device device_ = torch::kCPU;
  std::unique_ptr<ActivationSource> source_;
  std::unique_ptr<SaeModel> model_;
  std::unique_ptr<Adam> adam_;
  std::unique_ptr<WeightEma> ema_;
  std::unique_ptr<DeadLatentTracker> dead_;
  double base_lr_ = 0;
  int64_t step_ = 0;
  int64_t tokens_ = 0;
  int64_t total_steps_ = 0;
  int64_t overflow_tokens_ = 0;
  int64_t truncated_tokens_ = 0;
  int64_t candidates_per_shard_ = 0;
  // The local dead count after the last step (the next step's AuxK width), read with that step's
  // figures; unset: read it at the next step.
  std::optional<int64_t> dead_count_;
  bool resumed_ = false;
  std::string resumed_from_;
  std::optional<torch::Tensor> eval_inputs_;
  torch::Tensor ground_truth_;  // [F, d_in] true features (evaluation.ground_truth_path or the data's own)
  std::string eval_split_ = "held_out";
  std::atomic<bool> stop_requested_{false};
};

}  // namespace saegrid
