// Torch glue of the CUDA running top-k merge (running_topk_kernels.cu): checks the state and the
// chunk, widens float64 chunks to float32 (the CPU scan compares float32 values too), and launches
// on the current stream; the state is updated in place, nothing waits for the GPU.
#include "kernels/cuda/running_topk_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>

#include "kernels/cuda/running_topk_kernels.cuh"

namespace saegrid::kernels::cuda {

static_assert(kMaxRunningTopK == kTopKLimit, "the kernel's k limit is the routing limit");

void OfferChunk(const torch::Tensor& chunk, int64_t first_latent, const torch::Tensor& columns,
                torch::Tensor& values, torch::Tensor& ids) {
  const c10::cuda::CUDAGuard guard(values.device());
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == torch::kFloat && values.is_contiguous(),
              "saegrid CUDA RunningTopK: the state values must be contiguous float32 [rows, k]");
  TORCH_CHECK(ids.sizes() == values.sizes() && ids.scalar_type() == torch::kLong &&
                  ids.is_contiguous() && ids.device() == values.device(),
              "saegrid CUDA RunningTopK: the state ids must be contiguous int64 like the values");
  const int64_t rows = values.size(0), k = values.size(1);
  TORCH_CHECK(k <= kMaxRunningTopK, "saegrid CUDA RunningTopK: k ", k, " above ", kMaxRunningTopK);
  TORCH_CHECK(chunk.dim() == 2 && chunk.size(0) == rows, "saegrid CUDA RunningTopK: chunk must be [",
              rows, ", C], got ", chunk.sizes());
  TORCH_CHECK(chunk.device() == values.device(), "saegrid CUDA RunningTopK: chunk on ",
              chunk.device(), ", state on ", values.device());
  if (rows == 0 || k == 0) return;
  auto data = chunk.scalar_type() == torch::kDouble ? chunk.to(torch::kFloat) : chunk;
  TORCH_CHECK(data.scalar_type() == torch::kFloat || data.scalar_type() == torch::kBFloat16,
              "saegrid CUDA RunningTopK: chunks must be float32, bfloat16 or float64, got ",
              chunk.scalar_type());
  data = data.contiguous();
  torch::Tensor cols;
  if (columns.defined()) {
    TORCH_CHECK(columns.dim() == 1, "saegrid CUDA RunningTopK: columns must be 1-D");
    cols = columns.to(values.device(), torch::kLong).contiguous();
    if (cols.numel() == 0) return;
  }
  const ChunkType type =
      data.scalar_type() == torch::kFloat ? ChunkType::kFloat32 : ChunkType::kBFloat16;
  C10_CUDA_CHECK(LaunchOfferChunk(data.data_ptr(), type, rows, data.size(1), first_latent,
                                  cols.defined() ? cols.data_ptr<int64_t>() : nullptr,
                                  cols.defined() ? cols.numel() : 0, values.data_ptr<float>(),
                                  ids.data_ptr<int64_t>(), k, at::cuda::getCurrentCUDAStream()));
}

}  // namespace saegrid::kernels::cuda
