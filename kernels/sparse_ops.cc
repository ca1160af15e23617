#include "kernels/sparse_ops.h"

#include <c10/util/Exception.h>

#include "kernels/cpu/sparse_ops_cpu.h"

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

void CheckCpu(const torch::Tensor& t) {
  // The CUDA implementations arrive with kernels/cuda/; until then say so instead of crashing.
  TORCH_CHECK(t.device().is_cpu(), "saegrid kernels: no implementation for device ", t.device(),
              " in this build");
}

}  // namespace

torch::Tensor DenseSparseMatmul(const torch::Tensor& values, const torch::Tensor& indices,
                                const torch::Tensor& rows) {
  CheckSparsePair(values, indices);
  CheckRows(rows);
  CheckCpu(rows);
  return cpu::DenseSparseMatmul(values.contiguous(), indices.contiguous(), rows.contiguous());
}

torch::Tensor MatmulAtSparseIndices(const torch::Tensor& dense, const torch::Tensor& rows,
                                    const torch::Tensor& indices) {
  CheckRows(rows);
  TORCH_CHECK(dense.dim() == 2 && dense.size(1) == rows.size(1), "dense ", dense.sizes(),
              " and rows ", rows.sizes(), " differ in width");
  TORCH_CHECK(indices.dim() == 2 && indices.size(0) == dense.size(0),
              "indices must be [B, K] with B = ", dense.size(0));
  TORCH_CHECK(indices.scalar_type() == torch::kLong, "sparse indices must be int64");
  CheckCpu(rows);
  return cpu::MatmulAtSparseIndices(dense.contiguous(), rows.contiguous(), indices.contiguous());
}

void ScatterAddOuterByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                             const torch::Tensor& dense, torch::Tensor& out) {
  CheckSparsePair(values, indices);
  CheckRows(out);
  TORCH_CHECK(out.is_contiguous(), "scatter target must be contiguous");
  TORCH_CHECK(dense.dim() == 2 && dense.size(0) == values.size(0) && dense.size(1) == out.size(1),
              "dense ", dense.sizes(), " does not match values ", values.sizes(), " and target ",
              out.sizes());
  CheckCpu(out);
  cpu::ScatterAddOuterByLatent(values.contiguous(), indices.contiguous(), dense.contiguous(), out);
}

torch::Tensor SumByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                          int64_t num_rows) {
  CheckSparsePair(values, indices);
  CheckCpu(values);
  return cpu::SumByLatent(values.contiguous(), indices.contiguous(), num_rows);
}

}  // namespace saegrid::kernels
