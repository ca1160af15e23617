#include "engine/activation/batch_topk.h"

#include <torch/torch.h>

#include <algorithm>
#include <optional>

#include "engine/activation/architectures.h"
#include "engine/activation/latent_collectors.h"
#include "engine/chunked_encoder.h"
#include "engine/sharded_selection.h"

namespace saegrid {
namespace {

// The entries that activate: a kept entry <= 0 would be zeroed by the ReLU anyway.
LatentEntries Positive(const LatentEntries& e, const torch::Tensor& keep = torch::Tensor()) {
  auto mask = e.values > 0;
  if (keep.defined()) mask.logical_and_(keep);
  const auto where = mask.nonzero().squeeze(1);
  return {e.rows.index_select(0, where), e.latents.index_select(0, where), e.values.index_select(0, where)};
}

}  // namespace

absl::StatusOr<TrainingSelection> BatchTopK::Select(const SelectionInputs& in) const {
  const auto& p = *in.params;
  const int64_t latents = p.w_enc.size(0);
  const int64_t batch = in.x_centered.size(0);
  const int64_t shards = in.shards != nullptr ? in.shards->size() : 1;
  const int64_t available = batch * latents;  // this shard's entries
  const int64_t take = std::min(in.k * batch, available * shards);
  const int64_t offered = in.shards == nullptr ? take
                                               : CandidatesPerShard(take, shards, available, in.capacity_factor, in.exact);
  const bool has_extra = in.shards != nullptr && offered < std::min(take, available);
  BatchTopKCollector best(offered, latents, has_extra);
  std::optional<PerTokenTopK> aux;
  std::vector<EncoderChunkConsumer*> consumers = {&best};
  if (in.aux_width > 0 && in.dead_mask.defined()) {
    aux.emplace(batch, 0, in.dead_mask, in.aux_width, in.x_centered.device());
    consumers.push_back(&*aux);
  }
  RunChunkedEncoder(in.x_centered, p, config_.compute_dtype, config_.encoder_chunk_latents, in.profile, consumers);
  torch::NoGradGuard no_grad;
  LatentEntries entries = best.Finish();
  TrainingSelection out;
  const auto tokens = torch::zeros({}, in.x_centered.options().dtype(torch::kLong));
  out.possibly_truncated = tokens;
  out.truncated = tokens;
  if (in.shards == nullptr) {
    entries = Positive(entries);
  } else {
    // Every shard offers the same number of values (its block has as many entries as any other).
    auto offer = entries.values;
    if (has_extra) offer = torch::cat({offer, best.NextValue().view({1}).to(offer.device())});
    auto gathered = in.shards->AllGather(offer);
    if (!gathered.ok()) return gathered.status();
    GlobalCut cut = CutGlobalBatchTopK(*gathered, in.shards->rank(), take, has_extra);
    entries = Positive(entries, cut.keep);
    // A batch's truncation counts all of its tokens (the cut is the batch's).
    out.possibly_truncated = cut.possibly_truncated.to(torch::kLong) * batch;
    out.truncated = cut.truncated.to(torch::kLong) * batch;
  }
  out.main = PackByRow(entries, batch);
  if (config_.compute_dtype == ComputeDtype::kBFloat16) {
    // The bfloat16 values only ranked the entries.
    out.main.values = ExactPreActivations(in.x_centered, p, out.main.indices) * out.main.keep.to(torch::kFloat);
  }
  if (aux) {
    out.aux = aux->Finish().aux;
    if (config_.compute_dtype == ComputeDtype::kBFloat16) out.aux = RecomputeExactly(in.x_centered, p, *out.aux);
  }
  return out;
}

std::pair<torch::Tensor, torch::Tensor> BatchTopK::DenseActivations(const torch::Tensor& pre, const SaeParameters&,
                                                                    int64_t k) const {
  const auto flat = pre.detach().reshape({-1});
  const auto top = std::get<1>(flat.topk(std::min(k * pre.size(0), flat.numel())));
  const auto mask = torch::zeros_like(flat).scatter_(0, top, 1.0).view_as(pre);
  return {torch::relu(pre) * mask, torch::Tensor()};
}

Selection BatchTopK::Encode(const torch::Tensor& x_centered, const SaeParameters& params) const {
  torch::NoGradGuard no_grad;
  const int64_t batch = x_centered.size(0), latents = params.w_enc.size(0);
  Selection s;
  if (config_.inference_threshold >= 0) {
    ThresholdCollector above(torch::full({}, config_.inference_threshold, x_centered.options()));
    RunChunkedEncoder(x_centered, params, ComputeDtype::kFloat32, config_.encoder_chunk_latents, nullptr, {&above});
    s = PackByRow(above.Finish(), batch);
  } else {
    BatchTopKCollector best(std::min(config_.k * batch, batch * latents), latents, false);
    RunChunkedEncoder(x_centered, params, ComputeDtype::kFloat32, config_.encoder_chunk_latents, nullptr, {&best});
    s = PackByRow(Positive(best.Finish()), batch);
  }
  s.values = torch::relu(s.values) * s.keep.to(torch::kFloat);
  return s;
}

ActivationExport BatchTopK::Export(const SaeParameters& published, double input_scale) const {
  const double threshold = std::max(config_.inference_threshold, 0.0) / input_scale;
  return {"jumprelu", /*sparsify_loadable=*/false,
          torch::full({published.w_enc.size(0)}, threshold, published.w_enc.options().dtype(torch::kFloat))};
}

std::unique_ptr<ActivationFunction> MakeBatchTopK(const ModelConfig& config) {
  return std::make_unique<BatchTopK>(config);
}

}  // namespace saegrid
