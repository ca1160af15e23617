#include "kernels/portable/running_topk_portable.h"

#include <torch/torch.h>

#include <algorithm>
#include <limits>

namespace saegrid::kernels::portable {

void OfferChunk(const torch::Tensor& chunk, int64_t first_latent, const torch::Tensor& columns,
                torch::Tensor& values, torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  const int64_t k = values.size(1);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  torch::Tensor offered = columns.defined() ? chunk.index_select(1, columns) : chunk;
  const int64_t width = offered.size(1);
  if (k == 0 || width == 0) return;
  // NaN is never selected: it becomes an empty slot (-inf, id 0 below).
  offered = offered.masked_fill(torch::isnan(offered), neg_inf);
  const int64_t take = std::min(k, width);
  auto [top_values, top_positions] = offered.topk(take, /*dim=*/1, /*largest=*/true, /*sorted=*/true);
  const auto top_ids = columns.defined() ? columns.index_select(0, top_positions.reshape(-1))
                                               .view_as(top_positions) + first_latent
                                         : top_positions + first_latent;
  auto merged_values = torch::cat({values, top_values.to(torch::kFloat)}, 1);
  auto merged_ids = torch::cat({ids, top_ids}, 1);
  // Order by (value descending, id ascending): a stable sort by id, then a stable sort by value.
  const auto by_id = std::get<1>(merged_ids.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false));
  merged_values = merged_values.gather(1, by_id);
  merged_ids = merged_ids.gather(1, by_id);
  const auto by_value = std::get<1>(merged_values.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
  values = merged_values.gather(1, by_value).narrow(1, 0, k).contiguous();
  ids = merged_ids.gather(1, by_value).narrow(1, 0, k).contiguous();
  ids.masked_fill_(values == neg_inf, 0);
}

}  // namespace saegrid::kernels::portable
