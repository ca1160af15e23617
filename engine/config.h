// Plain configuration of one training run. The service's saegrid.v1.JobSpec message (proto/) and
// the local YAML/JSON config (spec/) map onto these structs; the engine itself depends on neither.
// Defaults follow the TopK SAE papers; docs/configuration.md lists every field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace saegrid {

// The activation function (engine/activation/ has one file per architecture; their config
// names are in engine/activation/architecture_names.h).
enum class Architecture { kTopK, kBatchTopK, kJumpReLU, kMatryoshka, kReLU };
// kDatasetConstant: every input times one constant, fitted on the initialisation sample so that
// E||x||^2 = d_in (ModelConfig::input_scale), kept in the checkpoint and folded out on export.
enum class InputNormalization { kNone, kLayerNorm, kDatasetConstant };
enum class DecoderInit { kRandomUnit, kOrthogonal };
enum class LrDecay { kNone, kLinear };
// The encoder matmul's dtype; master weights, optimizer state and the sparse ops stay float32.
enum class ComputeDtype { kFloat32, kBFloat16 };

struct ModelConfig {
  Architecture architecture = Architecture::kTopK;
  int64_t d_in = 0;         // 0: taken from the data
  int64_t num_latents = 0;  // 0: d_in * expansion_factor
  int64_t expansion_factor = 4;
  int64_t k = 32;
  InputNormalization normalize_inputs = InputNormalization::kNone;
  double input_scale = 1.0;  // kDatasetConstant's fitted constant; 1 otherwise
  DecoderInit decoder_init = DecoderInit::kRandomUnit;
  // b_pre initialisation: geometric median (Weiszfeld) of this many data rows.
  int64_t geometric_median_samples = 32768;
  // AuxK: alpha * FVU of the residual, fitted by the top k_aux dead latents.
  int64_t k_aux = 0;  // 0: the power of two nearest d_in / 2
  double auxk_alpha = 1.0 / 32.0;
  int64_t dead_tokens_threshold = 10'000'000;  // a latent silent for this many tokens is dead
  double l1_coefficient = 1e-3;                // ReLU SAE only
  // The k schedule (TopK, BatchTopK, Matryoshka): k starts at k_initial and decreases linearly
  // to k over the first k_schedule_steps steps (0 / 0: k throughout).
  int64_t k_initial = 0;
  int64_t k_schedule_steps = 0;
  // BatchTopK and Matryoshka: the inference threshold is an exponential moving average of the
  // smallest kept activation of each batch, with this decay.
  double threshold_decay = 0.99;
  // Fitted during training (BatchTopK, Matryoshka): the threshold inference applies instead of the
  // batch's top k*B (kept in the checkpoint, exported as a JumpReLU threshold); < 0: not yet.
  double inference_threshold = -1;
  // JumpReLU (Rajamanoharan et al.): per-latent thresholds theta = exp(log_threshold), trained
  // with the straight-through estimator (rectangle kernel of this bandwidth) and the step (L0)
  // penalty l0_coefficient * mean per-token L0; with target_l0 > 0 the penalty is
  // l0_coefficient * (L0 / target_l0 - 1)^2 instead.
  double jumprelu_initial_threshold = 0.001;
  double jumprelu_bandwidth = 0.001;
  double l0_coefficient = 1e-3;
  double target_l0 = 0;
  // Matryoshka: the nested dictionaries' sizes, increasing, the last < num_latents (the whole
  // dictionary is always the last prefix). Empty: num_latents / 16, / 8, / 4, / 2.
  std::vector<int64_t> matryoshka_prefixes;
  ComputeDtype compute_dtype = ComputeDtype::kFloat32;
  // Latents per encoder chunk of the sparse TopK step (0: about 64 MiB of pre-activations).
  int64_t encoder_chunk_latents = 0;
};

struct OptimizerConfig {
  double lr = 0;  // 0: 2e-4 / sqrt(num_latents / 2^14)
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 6.25e-10;
  int64_t warmup_steps = 0;
  LrDecay lr_decay = LrDecay::kNone;
  double decay_start_fraction = 0.8;  // linear decay to 0 over the steps after this fraction
  double grad_clip_norm = 0;          // 0: no clipping
  double ema_decay = 0;               // 0: no EMA; else e.g. 0.999 (bias-corrected)
};

struct SyntheticDataConfig {
  // Seed 004's generator (Sharkey et al. 2022): correlated feature probabilities, decay,
  // Bernoulli trials, uniform magnitudes.
  int64_t num_samples = 262144;
  int64_t num_features = 512;
  int64_t d = 256;
  double avg_active_features = 5;
  double lambda_decay = 0.99;
  uint64_t seed = 0;
};

// Activations made on the fly: a language model (engine/lm/) run over a token file inside the
// trainer, one hookpoint's activations mixed in a shuffle buffer
// (engine/data/language_model_source.h).
struct LanguageModelDataConfig {
  std::string model_path;   // a Hugging Face model directory (config.json + safetensors)
  std::string tokens_path;  // flat uint16/uint32 ids, or a .npy of integer ids
  std::string token_dtype = "uint16";  // of a flat token file: "uint16" or "uint32"
  int64_t context_length = 128;        // tokens per sequence
  std::string hookpoint;  // "blocks.8.hook_resid_post", "h.8", ... (engine/lm/language_model.h)
  std::vector<int64_t> exclude_token_ids;  // positions holding these ids are not trained on (BOS)
  int64_t sequences_per_forward = 8;       // the model's batch
  // Sequences whose activations are mixed together (rows permuted) before batches are cut; 0:
  // enough for 4 training batches.
  int64_t shuffle_sequences = 0;
  // Intra-op threads of the model's producer thread; 0: as many as the trainer's. On a CPU the
  // model and the SAE step share the cores: giving each its own share lets them overlap without
  // oversubscribing (docs/language_models.md has the figures).
  int64_t model_threads = 0;
  // The randomised-weights control: the architecture's own initialisation, seeded.
  bool random_weights = false;
  uint64_t random_weights_seed = 0;
  bool randomize_embeddings = false;
};

struct DataConfig {
  // Exactly one source: `path` (a directory of shards, a manifest .json, or a single shard
  // file), `synthetic`, `language_model` (its model_path set), or `decoder_rows`.
  std::string path;
  // A meta-SAE's data (seed 003): the published decoder rows W_dec [n, d] of another SAE's
  // checkpoint (a step directory, or an output directory's newest step), one row per example.
  std::string decoder_rows;
  LanguageModelDataConfig language_model;
  bool uses_language_model() const { return !language_model.model_path.empty(); }
  bool use_synthetic = false;
  SyntheticDataConfig synthetic;
  std::string dtype_override;  // "bf16" reads uint16 .npy data as bfloat16 bits
  int64_t batch_size = 4096;
  int64_t block_rows = 1024;         // rows read contiguously from one shard
  int64_t shuffle_buffer_blocks = 64;  // blocks mixed together by the shuffle buffer
  int64_t prefetch_batches = 2;
  double eval_fraction = 0.05;  // held-out blocks, never trained on
  int64_t eval_max_tokens = 65536;
  uint64_t seed = 0;
};

struct TrainingConfig {
  int64_t total_tokens = 0;  // training stops after this many tokens (rounded up to a step)
  int64_t log_every_steps = 10;
  uint64_t seed = 0;
};

struct CheckpointConfig {
  std::string output_dir = "out";
  std::string hookpoint = "sae";  // directory name of the sparsify-layout checkpoint
  int64_t every_steps = 0;        // 0: only at the end
  int64_t keep_last = 3;
  bool export_saelens = true;
  bool resume = true;  // resume from the latest checkpoint under output_dir if there is one
  // Ranks without a shared output_dir (service workers on different machines): replica 0's
  // shards send their state slices to rank 0, which writes the whole checkpoint alone.
  bool gather_to_leader = false;
};

// The papers' evaluations beyond reconstruction (engine/eval/), named in EvaluationConfig::run.
// Those marked "model" need data.language_model; the others run on activations.
struct LanguageModelEvalConfig {
  // Held-out sequences (the token file's evaluation split) the model-based evaluations read.
  int64_t sequences = 64;
  // ablation_sparsity: latents sampled, active tokens per latent, and positions T from the
  // ablated token on whose logits the effect is measured.
  int64_t ablation_latents = 16;
  int64_t ablation_tokens_per_latent = 4;
  int64_t ablation_horizon = 16;
  // n2g: latents sampled; examples to build each explanation from, and as many held out.
  int64_t n2g_latents = 16;
  int64_t n2g_examples = 16;
  // top_examples: the most activating tokens kept per latent, and the tokens of context before
  // and after each in the export.
  int64_t top_examples = 16;
  int64_t context_before = 12;
  int64_t context_after = 4;
};

struct ProbeEvalConfig {
  // A labelled set for 1-d probes: labels [N] or [N, T] (.npy; 0/1, any numeric dtype) aligned
  // row for row with the activation rows of `activations_path` (default: data.path). Synthetic
  // data needs neither: its tasks are "true feature f is active" on held-out samples.
  std::string labels_path;
  std::string activations_path;
  std::vector<std::string> task_names;  // default: "task_0", ...
  int64_t max_rows = 8192;
  int64_t max_tasks = 32;  // synthetic data: the most frequent true features
};

struct EvaluationConfig {
  // Optional ground truth for recovery metrics: a safetensors file with "features" [F, d_in]
  // (toy data made elsewhere; the synthetic generator has its own).
  std::string ground_truth_path;
  double recovery_cosine = 0.9;
  // The evaluations to run on the final weights (engine/eval/suite.h lists the names):
  // downstream_loss, ablation_sparsity, n2g, token_stats, top_examples (model);
  // probes, shrinkage, sae_comparison (activations).
  std::vector<std::string> run;
  bool at_checkpoints = false;  // also at each periodic checkpoint
  uint64_t seed = 0;            // which latents and tokens the sampled evaluations take
  LanguageModelEvalConfig language_model;
  ProbeEvalConfig probes;
  int64_t shrinkage_iterations = 200;
  // sae_comparison: a smaller SAE on the same hookpoint (a checkpoint step or output directory)
  // and the max-cosine threshold between novel and reconstruction latents.
  std::string compare_checkpoint;
  double novel_threshold = 0.7;
};

struct ParallelConfig {
  // World = shards x replicas ranks. Each shard owns num_latents / shards latents; each replica
  // trains on batch_size / replicas rows of every batch.
  int64_t shards = 1;
  int64_t replicas = 1;
  // Each shard offers k_in = min(ceil(capacity_factor * k / shards), k) top-k candidates.
  double capacity_factor = 2.0;
  bool exact = false;              // offer k candidates per shard: the exact global top-k
  std::string backend = "gloo";    // "gloo" (CPU tensors) or "nccl" (CUDA tensors)
  std::string device = "cpu";      // "cpu", "cuda" or "cuda:N" (engine/device.h)
  // "auto": each device's own kernels (kernels/cpu/, kernels/cuda/); "portable": the
  // LibTorch-operator implementations on every device (kernels/dispatch.h).
  std::string kernels = "auto";
  // Bitwise-reproducible device kernels (LibTorch's deterministic-algorithms flag: the CUDA
  // scatters group by latent instead of using atomics). The CPU kernels always are.
  bool deterministic = false;
  double timeout_seconds = 300;    // a collective or the rendezvous gives up after this
};

struct RuntimeConfig {
  int num_threads = 0;  // 0: all cores of this machine
};

struct TrainConfig {
  std::string name;
  ModelConfig model;
  OptimizerConfig optimizer;
  DataConfig data;
  TrainingConfig training;
  CheckpointConfig checkpoint;
  EvaluationConfig evaluation;
  ParallelConfig parallelism;
  RuntimeConfig runtime;
};

}  // namespace saegrid
