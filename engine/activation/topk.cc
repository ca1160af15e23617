// TopK (Gao et al.): each token keeps its k largest pre-activations, then ReLU. Sharded, each
// shard offers its top k_in candidates per token (plus the next value, to tell a real truncation)
// and every shard makes the same global cut (engine/sharded_selection.h).
#include <torch/torch.h>

#include <algorithm>

#include "engine/activation/architectures.h"
#include "engine/chunked_encoder.h"
#include "engine/sharded_selection.h"

namespace saegrid {
namespace {

class TopK final : public ActivationFunction {
 public:
  explicit TopK(const ModelConfig& config) : ActivationFunction(config) {}

  absl::StatusOr<TrainingSelection> Select(const SelectionInputs& in) const override {
    const auto& p = *in.params;
    const int64_t latents = p.w_enc.size(0);
    const int64_t batch = in.x_centered.size(0);
    const int64_t k = std::min(in.k, latents * (in.shards != nullptr ? in.shards->size() : 1));
    TrainingSelection out;
    const auto zero = torch::zeros({}, in.x_centered.options().dtype(torch::kLong));
    out.possibly_truncated = zero;
    out.truncated = zero;
    if (in.shards == nullptr) {
      auto c = SelectByChunkedEncoder(in.x_centered, p, std::min(k, latents), in.dead_mask, in.aux_width,
                                      config_.compute_dtype, config_.encoder_chunk_latents, in.profile);
      out.main = std::move(c.main);
      out.aux = std::move(c.aux);
      return out;
    }
    const int64_t k_in = CandidatesPerShard(k, in.shards->size(), latents, in.capacity_factor, in.exact);
    // The next value rides along when this shard could have offered more than k_in.
    const bool has_extra = k_in < std::min(k, latents);
    auto c = SelectByChunkedEncoder(in.x_centered, p, k_in + (has_extra ? 1 : 0), in.dead_mask, in.aux_width,
                                    config_.compute_dtype, config_.encoder_chunk_latents, in.profile);
    torch::NoGradGuard no_grad;
    auto gathered = in.shards->AllGather(c.main.values);
    if (!gathered.ok()) return gathered.status();
    GlobalCut cut = CutGlobalTopK(*gathered, in.shards->rank(), k, has_extra);
    out.main = {c.main.indices.narrow(1, 0, k_in), c.main.values.narrow(1, 0, k_in), cut.keep};
    out.possibly_truncated = cut.possibly_truncated.sum();
    out.truncated = cut.truncated.sum();
    out.aux = std::move(c.aux);
    (void)batch;
    return out;
  }

  std::pair<torch::Tensor, torch::Tensor> DenseActivations(const torch::Tensor& pre, const SaeParameters&,
                                                           int64_t k) const override {
    const auto top = std::get<1>(pre.detach().topk(std::min(k, pre.size(1)), 1));
    const auto mask = torch::zeros_like(pre).scatter_(1, top, 1.0);
    return {torch::relu(pre) * mask, torch::Tensor()};
  }

  bool UsesAuxK() const override { return true; }
  bool UsesK() const override { return true; }

  Selection Encode(const torch::Tensor& x_centered, const SaeParameters& params) const override {
    // Float32 for evaluation whatever the training dtype; no B x n matrix here either.
    Selection s = SelectByChunkedEncoder(x_centered, params, std::min(config_.k, params.w_enc.size(0)),
                                         torch::Tensor(), 0, ComputeDtype::kFloat32,
                                         config_.encoder_chunk_latents, nullptr)
                      .main;
    s.values = torch::relu(s.values);
    return s;
  }

  ActivationExport Export(const SaeParameters&, double) const override {
    return {"topk", /*sparsify_loadable=*/true, torch::Tensor()};
  }
};

}  // namespace

std::unique_ptr<ActivationFunction> MakeTopK(const ModelConfig& config) { return std::make_unique<TopK>(config); }

}  // namespace saegrid
