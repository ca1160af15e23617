#include "kernels/sparse_ops.h"

#include <c10/util/Exception.h>

#include "kernels/cpu/sparse_ops_cpu.h"
#include "kernels/dispatch.h"
#include "kernels/portable/sparse_ops_portable.h"
#if defined(SAEGRID_WITH_CUDA_KERNELS)
#include "kernels/cuda/sparse_ops_cuda.h"
#endif

namespace saegrid::kernels {
namespace {

void CheckSparsePair(const torch::Tensor& values, const torch::Tensor& indices) {
  TORCH_CHECK(values.dim() == 2 && indices.dim() == 2, "sparse values and indices must be [B, K]");
  TORCH_CHECK(values.sizes() == indices.sizes(), "sparse values ", values.sizes(),
              " and indices ", indices.sizes(), " differ in shape");
  TORCH_CHECK(indices.scalar_type() == torch::kLong, "sparse indices must be int64");
}

void CheckRows(const torch::Tensor& rows) {
  TORCH_CHECK(rows.dim() == 2, "row matrix must be [num_rows, d], got ", rows.sizes());
}

void CheckSameDevice(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& c) {
  TORCH_CHECK(a.device() == b.device() && b.device() == c.device(),
              "saegrid kernels: operands on different devices (", a.device(), ", ", b.device(), ", ",
              c.device(), ")");
}

// The implementation for these operands: kernels/cuda/ takes float32 and bfloat16, so float64
// on a CUDA device goes to the portable path.
Implementation Route(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& c) {
  const Implementation chosen = ImplementationFor(a.device());
  const bool any_double = a.scalar_type() == torch::kDouble || b.scalar_type() == torch::kDouble ||
                          c.scalar_type() == torch::kDouble;
  return chosen == Implementation::kCuda && any_double ? Implementation::kPortable : chosen;
}

// Out-of-range ids are an error. The CPU kernels index raw memory, so they are checked here
// (free on the CPU); the portable path's LibTorch gathers check for themselves; on an accelerator
// a check would cost a host synchronisation per call, so the CUDA kernels trust their callers:
// every id the engine passes comes from a top-k over the same rows.
void CheckIndexRange(Implementation implementation, const torch::Tensor& indices, int64_t num_rows) {
  if (implementation != Implementation::kCpu || indices.numel() == 0) return;
  const int64_t lo = indices.min().item<int64_t>();
  const int64_t hi = indices.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < num_rows, "sparse index out of range: [", lo, ", ", hi, "] for ",
              num_rows, " rows");
}

}  // namespace

torch::Tensor DenseSparseMatmul(const torch::Tensor& values, const torch::Tensor& indices,
                                const torch::Tensor& rows) {
  CheckSparsePair(values, indices);
  CheckRows(rows);
  CheckSameDevice(values, indices, rows);
  const Implementation implementation = Route(rows, values, values);
  CheckIndexRange(implementation, indices, rows.size(0));
  switch (implementation) {
    case Implementation::kCpu:
      return cpu::DenseSparseMatmul(values.contiguous(), indices.contiguous(), rows.contiguous());
#if defined(SAEGRID_WITH_CUDA_KERNELS)
    case Implementation::kCuda:
      return cuda::DenseSparseMatmul(values.contiguous(), indices.contiguous(), rows.contiguous());
#endif
    default:
      return portable::DenseSparseMatmul(values.contiguous(), indices.contiguous(), rows.contiguous());
  }
}

torch::Tensor MatmulAtSparseIndices(const torch::Tensor& dense, const torch::Tensor& rows,
                                    const torch::Tensor& indices) {
  CheckRows(rows);
  TORCH_CHECK(dense.dim() == 2 && dense.size(1) == rows.size(1), "dense ", dense.sizes(),
              " and rows ", rows.sizes(), " differ in width");
  TORCH_CHECK(indices.dim() == 2 && indices.size(0) == dense.size(0),
              "indices must be [B, K] with B = ", dense.size(0));
  TORCH_CHECK(indices.scalar_type() == torch::kLong, "sparse indices must be int64");
  CheckSameDevice(dense, rows, indices);
  const Implementation implementation = Route(rows, dense, dense);
  CheckIndexRange(implementation, indices, rows.size(0));
  switch (implementation) {
    case Implementation::kCpu:
      return cpu::MatmulAtSparseIndices(dense.contiguous(), rows.contiguous(), indices.contiguous());
#if defined(SAEGRID_WITH_CUDA_KERNELS)
    case Implementation::kCuda:
      return cuda::MatmulAtSparseIndices(dense.contiguous(), rows.contiguous(), indices.contiguous());
#endif
    default:
      return portable::MatmulAtSparseIndices(dense.contiguous(), rows.contiguous(), indices.contiguous());
  }
}

void ScatterAddOuterByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                             const torch::Tensor& dense, torch::Tensor& out) {
  CheckSparsePair(values, indices);
  CheckRows(out);
  TORCH_CHECK(out.is_contiguous(), "scatter target must be contiguous");
  TORCH_CHECK(dense.dim() == 2 && dense.size(0) == values.size(0) && dense.size(1) == out.size(1),
              "dense ", dense.sizes(), " does not match values ", values.sizes(), " and target ",
              out.sizes());
  CheckSameDevice(values, indices, out);
  CheckSameDevice(values, dense, out);
  const Implementation implementation = Route(out, values, dense);
  CheckIndexRange(implementation, indices, out.size(0));
  switch (implementation) {
    case Implementation::kCpu:
      return cpu::ScatterAddOuterByLatent(values.contiguous(), indices.contiguous(), dense.contiguous(), out);
#if defined(SAEGRID_WITH_CUDA_KERNELS)
    case Implementation::kCuda:
      return cuda::ScatterAddOuterByLatent(values.contiguous(), indices.contiguous(), dense.contiguous(), out);
#endif
    default:
      return portable::ScatterAddOuterByLatent(values.contiguous(), indices.contiguous(), dense.contiguous(), out);
  }
}

torch::Tensor SumByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                          int64_t num_rows) {
  CheckSparsePair(values, indices);
  TORCH_CHECK(num_rows >= 0, "SumByLatent needs num_rows >= 0, got ", num_rows);
  CheckSameDevice(values, indices, indices);
  const Implementation implementation = Route(values, values, values);
  CheckIndexRange(implementation, indices, num_rows);
  switch (implementation) {
    case Implementation::kCpu:
      return cpu::SumByLatent(values.contiguous(), indices.contiguous(), num_rows);
#if defined(SAEGRID_WITH_CUDA_KERNELS)
    case Implementation::kCuda:
      return cuda::SumByLatent(values.contiguous(), indices.contiguous(), num_rows);
#endif
    default:
      return portable::SumByLatent(values.contiguous(), indices.contiguous(), num_rows);
  }
}

}  // namespace saegrid::kernels
