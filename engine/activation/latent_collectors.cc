#include "engine/activation/latent_collectors.h"

#include <torch/torch.h>

#include <algorithm>
#include <limits>

namespace saegrid {

BatchTopKCollector::BatchTopKCollector(int64_t capacity, int64_t num_latents, bool with_next)
    : capacity_(capacity), num_latents_(num_latents), with_next_(with_next) {}

void BatchTopKCollector::Offer(const torch::Tensor& pre, int64_t first_latent) {
  torch::NoGradGuard no_grad;
  const int64_t rows = pre.size(0), width = pre.size(1);
  const int64_t want = capacity_ + (with_next_ ? 1 : 0);
  // The chunk's own best entries first, so the merge below stays small.
  const auto flat = pre.to(torch::kFloat).reshape({-1});
  auto [chunk_values, positions] = flat.topk(std::min(want, flat.numel()), 0, true, true);
  const auto ids = positions.div(width, "floor") * num_latents_ + positions.remainder(width) + first_latent;
  if (values_.defined()) {
    chunk_values = torch::cat({values_, chunk_values});
    const auto all_ids = torch::cat({ids_, ids});
    auto [best, order] = chunk_values.topk(std::min(want, chunk_values.numel()), 0, true, true);
    values_ = best;
    ids_ = all_ids.index_select(0, order);
  } else {
    values_ = chunk_values;
    ids_ = ids;
  }
  (void)rows;
}

LatentEntries BatchTopKCollector::Finish() {
  const auto empty_long = torch::empty({0}, torch::TensorOptions().dtype(torch::kLong));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (!values_.defined()) {
    next_ = torch::full({}, neg_inf);
    return {empty_long, empty_long, torch::empty({0})};
  }
  const int64_t kept = std::min(capacity_, values_.numel());
  if (with_next_) {
    next_ = values_.numel() > capacity_ ? values_[capacity_].clone()
                                              : torch::full({}, neg_inf, values_.options());
  }
  const auto ids = ids_.narrow(0, 0, kept);
  return {ids.div(num_latents_, "floor"), ids.remainder(num_latents_), values_.narrow(0, 0, kept)};
}

void ThresholdCollector::Offer(const torch::Tensor& pre, int64_t first_latent) {
  torch::NoGradGuard no_grad;
  const auto values = pre.to(torch::kFloat);
  const auto threshold = threshold_.dim() == 0 ? threshold_ : threshold_.narrow(0, first_latent, pre.size(1));
  const auto above = values > threshold;
  const auto where = above.nonzero();  // [E, 2]
  rows_.push_back(where.select(1, 0));
  latents_.push_back(where.select(1, 1) + first_latent);
  values_.push_back(values.masked_select(above));
}

LatentEntries ThresholdCollector::Finish() const {
  if (rows_.empty()) {
    const auto empty_long = torch::empty({0}, threshold_.options().dtype(torch::kLong));
    return {empty_long, empty_long, torch::empty({0}, threshold_.options().dtype(torch::kFloat))};
  }
  return {torch::cat(rows_), torch::cat(latents_), torch::cat(values_)};
}

Selection PackByRow(const LatentEntries& entries, int64_t batch) {
  torch::NoGradGuard no_grad;
  const auto device = entries.rows.device();
  const auto long_options = torch::TensorOptions().dtype(torch::kLong).device(device);
  const auto counts = torch::bincount(entries.rows, /*weights=*/{}, batch);
  const int64_t width = std::max<int64_t>(1, entries.rows.numel() == 0 ? 1 : counts.max().item<int64_t>());
  Selection s;
  s.indices = torch::zeros({batch, width}, long_options);
  s.values = torch::zeros({batch, width}, entries.values.options().device(device));
  s.keep = torch::zeros({batch, width}, long_options.dtype(torch::kBool));
  if (entries.rows.numel() == 0) return s;
  // Stable by row, so that each row keeps the entries' order (BatchTopK: by value).
  const auto order = std::get<1>(entries.rows.sort(/*stable=*/true, 0, false));
  const auto rows = entries.rows.index_select(0, order);
  const auto starts = counts.cumsum(0) - counts;
  const auto slot = torch::arange(rows.numel(), long_options) - starts.index_select(0, rows);
  const auto flat = rows * width + slot;
  s.indices.view({-1}).index_put_({flat}, entries.latents.index_select(0, order));
  s.values.view({-1}).index_put_({flat}, entries.values.index_select(0, order));
  s.keep.view({-1}).index_put_({flat}, torch::ones_like(flat, long_options.dtype(torch::kBool)));
  return s;
}

}  // namespace saegrid
