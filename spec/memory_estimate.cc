#include "spec/memory_estimate.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/activation/architecture_names.h"

namespace saegrid {
namespace {

constexpr int64_t kFloat = 4;
constexpr int64_t kRuntimeBytes = int64_t{384} << 20;  // measured: an idle rank's RSS is ~300 MiB
constexpr int64_t kEncoderChunkBytes = int64_t{64} << 20;

// Saturating arithmetic: the sizes come from users, and their product must not wrap.
int64_t Mul(int64_t a, int64_t b) {
  if (a <= 0 || b <= 0) return 0;
  if (a > std::numeric_limits<int64_t>::max() / b) return std::numeric_limits<int64_t>::max();
  return a * b;
}
int64_t Add(int64_t a, int64_t b) {
  return a > std::numeric_limits<int64_t>::max() - b ? std::numeric_limits<int64_t>::max() : a + b;
}

std::string GiB(int64_t bytes) {
  if (bytes < (int64_t{1} << 30)) return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return absl::StrFormat("%.1f GiB", static_cast<double>(bytes) / (1 << 30));
}

}  // namespace

int64_t MemoryEstimate::total() const {
  int64_t sum = 0;
  for (int64_t b : {parameters, batches, encoder, data, evaluation, runtime}) sum = Add(sum, b);
  return sum;
}

std::string MemoryEstimate::ToString() const {
  std::vector<std::string> parts;
  for (const auto& [name, bytes] : {std::pair{"parameters", parameters}, std::pair{"batches", batches},
                                    std::pair{"encoder", encoder}, std::pair{"data", data},
                                    std::pair{"evaluation", evaluation}, std::pair{"runtime", runtime}}) {
    if (bytes > 0) parts.push_back(absl::StrCat(name, " ", GiB(bytes)));
  }
  return absl::StrCat(GiB(total()), " (", absl::StrJoin(parts, ", "), ")");
}

MemoryEstimate EstimateRankMemory(const TrainConfig& c) {
  MemoryEstimate e;
  const auto& m = c.model;
  const int64_t d = m.d_in > 0 ? m.d_in : (c.data.use_synthetic ? c.data.synthetic.d : 0);
  const int64_t n = m.num_latents > 0 ? m.num_latents : Mul(d, std::max<int64_t>(1, m.expansion_factor));
  const int64_t shards = std::max<int64_t>(1, c.parallelism.shards);
  const int64_t replicas = std::max<int64_t>(1, c.parallelism.replicas);
  const int64_t local_latents = (n + shards - 1) / shards;
  const int64_t rows = (std::max<int64_t>(1, c.data.batch_size) + replicas - 1) / replicas;
  // The widest selection: the k schedule starts at k_initial. The threshold architectures (ReLU,
  // JumpReLU) have no k; their selections are counted with the encoder below.
  const int64_t k = std::max<int64_t>({1, m.k, m.k_initial});

  // W_enc, W_dec [n, d], b_enc [n], b_pre [d]; each with a gradient and two Adam moments, plus
  // the EMA shadow; and the dead-latent counter (int64) per latent.
  const int64_t weights = Mul(Add(Mul(Mul(2, local_latents), d), Add(local_latents, d)), kFloat);
  const int64_t copies = 4 + (c.optimizer.ema_decay > 0 ? 1 : 0);
  e.parameters = Add(Mul(weights, copies), Mul(local_latents, 8));
  // The batch, its reconstruction and the prefetched batches, plus values and indices of the
  // main and AuxK selections (capacity factor 2 for the sharded candidates).
  const int64_t batch = Mul(Mul(rows, d), kFloat);
  e.batches = Add(Mul(batch, 3 + std::max<int64_t>(0, c.data.prefetch_batches)), Mul(Mul(rows, 4 * k), 12));
  if (ArchitectureUsesK(m.architecture)) {
    // TopK, BatchTopK, Matryoshka: one chunk of pre-activations at a time, and selections bounded
    // by k (counted with the batches).
    const int64_t whole = Mul(Mul(rows, local_latents), kFloat);
    e.encoder = m.encoder_chunk_latents > 0 ? Mul(Mul(rows, m.encoder_chunk_latents), kFloat)
                                            : std::min(whole, kEncoderChunkBytes);
  } else {
    // ReLU, JumpReLU: nothing bounds the active set but the dictionary, so room for a whole
    // matrix of pre-activations, activations and their gradient.
    e.encoder = Mul(Mul(Mul(rows, local_latents), kFloat), 3);
  }
  if (c.data.use_synthetic) {
    const auto& s = c.data.synthetic;
    // The samples [N, d], the feature directions [d, F] and the correlation factor [F, F].
    e.data = Add(Mul(Mul(s.num_samples, s.d), kFloat),
                 Add(Mul(Mul(s.d, s.num_features), kFloat), Mul(Mul(s.num_features, s.num_features), kFloat)));
  } else if (c.data.uses_language_model()) {
    // Three shuffle buffers (being read, ready, being made) and, while one is made, its
    // unpermuted copy and the model batches' pieces; the model's own weights are not known here
    // (resources.min_memory_bytes covers them).
    const auto& lm = c.data.language_model;
    const int64_t buffer_rows = lm.shuffle_sequences > 0 ? Mul(lm.shuffle_sequences, lm.context_length)
                                                         : Mul(4, std::max<int64_t>(1, c.data.batch_size));
    e.data = Mul(Mul(Mul(5, buffer_rows), d), kFloat);
  } else {
    e.data = Mul(Mul(Mul(c.data.shuffle_buffer_blocks, c.data.block_rows), d), kFloat);
  }
  e.evaluation = Mul(Mul(Mul(std::max<int64_t>(0, c.data.eval_max_tokens), d), kFloat), 2);
  e.runtime = kRuntimeBytes;
  return e;
}

absl::Status ValidateRankMemory(const TrainConfig& config) {
  const MemoryEstimate e = EstimateRankMemory(config);
  if (e.total() > kMaxRankMemoryBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the job needs about ", e.ToString(), " per rank, more than any machine has (limit ", GiB(kMaxRankMemoryBytes),
        "): reduce model.num_latents, model.d_in, data.batch_size or data.synthetic.num_samples, or add "
        "parallelism.shards"));
  }
  return absl::OkStatus();
}

}  // namespace saegrid
