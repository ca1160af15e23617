// Torch glue of the CUDA sparse kernels: dtype routing, output allocation and the current stream,
// around the raw launchers of sparse_ops_kernels.cu (kept free of LibTorch so that nvcc never
// compiles LibTorch headers). Nothing here synchronises with the host.
//
// Supported dtypes: float32 or bfloat16 row matrices (and scatter targets), values and dense
// operands of any floating type (widened to float32, as the CPU kernels do for these rows).
// float64 rows are rejected: they belong on the portable path.
#include "kernels/cuda/sparse_ops_cuda.h"

#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

#include "kernels/cuda/sparse_ops_kernels.cuh"

namespace saegrid::kernels::cuda {
namespace {

RowType RowTypeOf(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kBFloat16,
              "saegrid CUDA kernels: ", what, " must be float32 or bfloat16, got ", t.scalar_type());
  return t.scalar_type() == torch::kFloat ? RowType::kFloat32 : RowType::kBFloat16;
}

void CheckOn(const torch::Tensor& t, const torch::Tensor& reference, const char* what) {
  TORCH_CHECK(t.device() == reference.device(), "saegrid CUDA kernels: ", what, " is on ",
              t.device(), ", expected ", reference.device());
}

// Float operands (values, dense): widened to float32 like the CPU kernels do, float64 excluded
// because the CPU would then accumulate in float64.
torch::Tensor AsFloat(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() != torch::kDouble, "saegrid CUDA kernels: float64 ", what,
              " are served by the portable path");
  return t.to(torch::kFloat).contiguous();
}

// The grouping's limits: int32 entry positions, uint32 ids with one spare value.
void CheckGroupable(int64_t entries, int64_t num_rows) {
  TORCH_CHECK(entries < std::numeric_limits<int32_t>::max(),
              "saegrid CUDA kernels: too many sparse entries to group (", entries, ")");
  TORCH_CHECK(num_rows < std::numeric_limits<uint32_t>::max() - 1,
              "saegrid CUDA kernels: too many latents to group (", num_rows, ")");
}

// Groups `indices` by latent in scratch owned by the returned tensor (freed in stream order).
torch::Tensor Group(const torch::Tensor& indices, int64_t num_rows, cudaStream_t stream,
                    LatentGroups* groups) {
  const int64_t entries = indices.numel();
  CheckGroupable(entries, num_rows);
  const size_t bytes = GroupByLatentScratchBytes(entries, num_rows);
  TORCH_CHECK(bytes > 0, "saegrid CUDA kernels: could not size the grouping scratch");
  auto scratch = torch::empty({static_cast<int64_t>(bytes)}, indices.options().dtype(torch::kByte));
  C10_CUDA_CHECK(LaunchGroupByLatent(indices.data_ptr<int64_t>(), entries, num_rows,
                                     scratch.data_ptr(), bytes, stream, groups));
  return scratch;
}

}  // namespace

torch::Tensor DenseSparseMatmul(const torch::Tensor& values, const torch::Tensor& indices,
                                const torch::Tensor& rows) {
  const c10::cuda::CUDAGuard guard(rows.device());
  const RowType type = RowTypeOf(rows, "rows");
  CheckOn(values, rows, "values");
  CheckOn(indices, rows, "indices");
  const int64_t batch = values.size(0), k = values.size(1), d = rows.size(1);
  const auto vals = AsFloat(values, "values");
  const auto idx = indices.contiguous();
  const auto src = rows.contiguous();
  auto out = torch::empty({batch, d}, rows.options());
  C10_CUDA_CHECK(LaunchDenseSparseMatmul(vals.data_ptr<float>(), idx.data_ptr<int64_t>(),
                                         src.data_ptr(), out.data_ptr(), type, batch, k,
                                         rows.size(0), d, at::cuda::getCurrentCUDAStream()));
  return out;
}

torch::Tensor MatmulAtSparseIndices(const torch::Tensor& dense, const torch::Tensor& rows,
                                    const torch::Tensor& indices) {
  const c10::cuda::CUDAGuard guard(rows.device());
  const RowType type = RowTypeOf(rows, "rows");
  CheckOn(dense, rows, "dense");
  CheckOn(indices, rows, "indices");
  const int64_t batch = indices.size(0), k = indices.size(1), d = rows.size(1);
  const auto x = AsFloat(dense, "dense operands");
  const auto idx = indices.contiguous();
  const auto src = rows.contiguous();
  auto out = torch::empty({batch, k}, rows.options().dtype(torch::kFloat));
  C10_CUDA_CHECK(LaunchMatmulAtSparseIndices(x.data_ptr<float>(), src.data_ptr(), type,
                                             idx.data_ptr<int64_t>(), out.data_ptr<float>(), batch,
                                             k, rows.size(0), d, at::cuda::getCurrentCUDAStream()));
  return out;
}

void ScatterAddOuterByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                             const torch::Tensor& dense, torch::Tensor& out) {
  const c10::cuda::CUDAGuard guard(out.device());
  const RowType type = RowTypeOf(out, "the scatter target");
  TORCH_CHECK(out.is_contiguous(), "saegrid CUDA kernels: the scatter target must be contiguous");
  CheckOn(values, out, "values");
  CheckOn(indices, out, "indices");
  CheckOn(dense, out, "dense");
  const int64_t batch = values.size(0), k = values.size(1), num_rows = out.size(0), d = out.size(1);
  if (values.numel() == 0 || d == 0) return;
  const auto vals = AsFloat(values, "values");
  const auto idx = indices.contiguous();
  const auto x = AsFloat(dense, "dense operands");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // Atomics need no sort and no scratch and do not serialise a latent that many tokens select;
  // the grouped form is the deterministic one (and the only one for bfloat16 targets, which an
  // atomic add would round once per entry).
  if (at::globalContext().deterministicAlgorithms() || type == RowType::kBFloat16) {
    LatentGroups groups;
    const auto scratch = Group(idx, num_rows, stream, &groups);
    C10_CUDA_CHECK(LaunchScatterAddGrouped(groups, vals.data_ptr<float>(), x.data_ptr<float>(),
                                           out.data_ptr(), type, k, d, stream));
  } else {
    C10_CUDA_CHECK(LaunchScatterAddAtomic(vals.data_ptr<float>(), idx.data_ptr<int64_t>(),
                                          x.data_ptr<float>(), out.data_ptr<float>(), batch, k,
                                          num_rows, d, stream));
  }
}

torch::Tensor SumByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                          int64_t num_rows) {
  const c10::cuda::CUDAGuard guard(values.device());
  CheckOn(indices, values, "indices");
  TORCH_CHECK(num_rows >= 0, "saegrid CUDA kernels: negative row count ", num_rows);
  const auto vals = AsFloat(values, "values");
  const auto idx = indices.contiguous();
  const int64_t entries = vals.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (at::globalContext().deterministicAlgorithms()) {
    auto out = torch::zeros({num_rows}, vals.options());
    if (entries == 0) return out;
    LatentGroups groups;
    const auto scratch = Group(idx, num_rows, stream, &groups);
    C10_CUDA_CHECK(LaunchSumByLatentGrouped(groups, vals.data_ptr<float>(), out.data_ptr<float>(),
                                            stream));
    return out;
  }
  // float64 atomics: the order varies, but the sum is rounded to float32 only once.
  auto sums = torch::zeros({num_rows}, vals.options().dtype(torch::kDouble));
  C10_CUDA_CHECK(LaunchSumByLatentAtomic(vals.data_ptr<float>(), idx.data_ptr<int64_t>(), entries,
                                         num_rows, sums.data_ptr<double>(), stream));
  return sums.to(torch::kFloat);
}

}  // namespace saegrid::kernels::cuda
