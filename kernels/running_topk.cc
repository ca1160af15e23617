#include "kernels/running_topk.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <numeric>

#include <torch/torch.h>

#include "kernels/cpu/running_topk_cpu.h"
#include "kernels/portable/running_topk_portable.h"
#if defined(SAEGRID_WITH_CUDA_KERNELS)
#include "kernels/cuda/running_topk_cuda.h"
#endif

namespace saegrid::kernels {

namespace {

// Checked before the buffers are sized from it.
int64_t NonNegative(int64_t value, const char* name) {
  TORCH_CHECK(value >= 0, "RunningTopK needs ", name, " >= 0, got ", value);
  return value;
}

// The implementation for `device`; a k beyond the CUDA kernel's shared memory goes portable.
Implementation Choose(const torch::Device& device, int64_t k) {
  Implementation implementation = ImplementationFor(device);
#if defined(SAEGRID_WITH_CUDA_KERNELS)
  if (implementation == Implementation::kCuda && k > cuda::kMaxRunningTopK) implementation = Implementation::kPortable;
#endif
  return implementation;
}

}  // namespace

RunningTopK::RunningTopK(int64_t rows, int64_t k, torch::Device device)
    : rows_(NonNegative(rows, "rows")),
      k_(NonNegative(k, "k")),
      device_(device),
      implementation_(Choose(device, k)) {
  if (implementation_ == Implementation::kCpu) {
    values_.resize(rows_ * k_);
    ids_.resize(rows_ * k_);
    filled_.assign(rows_, 0);
  } else {
    const auto options = torch::TensorOptions().device(device_);
    device_values_ = torch::full({rows_, k_}, -std::numeric_limits<float>::infinity(), options.dtype(torch::kFloat));
    device_ids_ = torch::zeros({rows_, k_}, options.dtype(torch::kLong));
  }
}

void RunningTopK::Offer(const torch::Tensor& chunk, int64_t first_latent, const torch::Tensor& columns) {
  TORCH_CHECK(chunk.dim() == 2 && chunk.size(0) == rows_, "RunningTopK: chunk must be [", rows_,
              ", C], got ", chunk.sizes());
  TORCH_CHECK(chunk.device() == device_, "RunningTopK: a chunk on ", chunk.device(),
              " offered to a top-k on ", device_);
  torch::Tensor cols;
  if (columns.defined()) {
    TORCH_CHECK(columns.dim() == 1 && columns.scalar_type() == torch::kLong,
                "RunningTopK: columns must be a 1-D int64 tensor");
    TORCH_CHECK(columns.device() == device_, "RunningTopK: columns on ", columns.device(),
                " for a top-k on ", device_);
    cols = columns.contiguous();
    if (cols.numel() == 0) return;
    // The CPU heaps index raw memory: checked here (free there). The portable gathers check for
    // themselves; on an accelerator a check would be a host synchronisation, and the engine's
    // columns (dead latents of the chunk) are in range by construction.
    if (implementation_ == Implementation::kCpu) {
      const int64_t lo = cols.min().item<int64_t>(), hi = cols.max().item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi < chunk.size(1), "RunningTopK: column [", lo, ", ", hi,
                  "] outside a chunk of ", chunk.size(1));
    }
  }
  switch (implementation_) {
    case Implementation::kCpu:
      cpu::OfferChunk(chunk.contiguous(), first_latent, cols,
                      cpu::RowHeaps{values_.data(), ids_.data(), filled_.data(), k_});
      return;
#if defined(SAEGRID_WITH_CUDA_KERNELS)
    case Implementation::kCuda:
      if (chunk.scalar_type() == torch::kFloat || chunk.scalar_type() == torch::kBFloat16) {
        cuda::OfferChunk(chunk.contiguous(), first_latent, cols, device_values_, device_ids_);
        return;
      }
      break;  // float64 chunks: the portable merge
#endif
    default:
      break;
  }
  portable::OfferChunk(chunk.contiguous(), first_latent, cols, device_values_, device_ids_);
}

std::pair<torch::Tensor, torch::Tensor> RunningTopK::Finish() const {
  if (implementation_ != Implementation::kCpu) return {device_values_.clone(), device_ids_.clone()};
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
