#include "kernels/running_topk.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <numeric>

#include "kernels/cpu/running_topk_cpu.h"

namespace saegrid::kernels {

namespace {

// Checked before the buffers are sized from it.
int64_t NonNegative(int64_t value, const char* name) {
  TORCH_CHECK(value >= 0, "RunningTopK needs ", name, " >= 0, got ", value);
  return value;
}

}  // namespace

RunningTopK::RunningTopK(int64_t rows, int64_t k)
    : rows_(NonNegative(rows, "rows")),
      k_(NonNegative(k, "k")),
      values_(rows_ * k_),
      ids_(rows_ * k_),
      filled_(rows_, 0) {}

void RunningTopK::Offer(const torch::Tensor& chunk, int64_t first_latent, const torch::Tensor& columns) {
  TORCH_CHECK(chunk.dim() == 2 && chunk.size(0) == rows_, "RunningTopK: chunk must be [", rows_,
              ", C], got ", chunk.sizes());
  TORCH_CHECK(chunk.device().is_cpu(), "RunningTopK: no implementation for device ", chunk.device(),
              " in this build");
  torch::Tensor cols;
  if (columns.defined()) {
    TORCH_CHECK(columns.dim() == 1 && columns.scalar_type() == torch::kLong,
                "RunningTopK: columns must be a 1-D int64 tensor");
    cols = columns.contiguous();
    if (cols.numel() == 0) return;
    const int64_t lo = cols.min().item<int64_t>(), hi = cols.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < chunk.size(1), "RunningTopK: column [", lo, ", ", hi,
                "] outside a chunk of ", chunk.size(1));
  }
  cpu::OfferChunk(chunk.contiguous(), first_latent, cols,
                  cpu::RowHeaps{values_.data(), ids_.data(), filled_.data(), k_});
}

std::pair<torch::Tensor, torch::Tensor> RunningTopK::Finish() const {
  auto values = torch::empty({rows_, k_}, torch::kFloat);
  auto ids = torch::empty({rows_, k_}, torch::kLong);
  float* out_v = values.data_ptr<float>();
  int64_t* out_id = ids.data_ptr<int64_t>();
  at::parallel_for(0, rows_, 64, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(k_);
    for (int64_t r = begin; r < end; ++r) {
      const float* v = values_.data() + r * k_;
      const int64_t* id = ids_.data() + r * k_;
      const int64_t filled = filled_[r];
      order.resize(filled);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return v[a] > v[b] || (v[a] == v[b] && id[a] < id[b]);
      });
      for (int64_t j = 0; j < k_; ++j) {
        const bool real = j < filled;
        out_v[r * k_ + j] = real ? v[order[j]] : -std::numeric_limits<float>::infinity();
        out_id[r * k_ + j] = real ? id[order[j]] : 0;
      }
    }
  });
  return {values, ids};
}

}  // namespace saegrid::kernels
