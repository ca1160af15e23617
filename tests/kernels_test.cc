// Each sparse kernel against the dense LibTorch computation it replaces.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/sparse_ops.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using SparseKernels = testing::KernelPathTest;

using testing::RelativeError;

struct SparseCase {
  torch::Tensor values, indices, rows, dense_z;  // dense_z: [B, n] with the values scattered
};

SparseCase MakeCase(int64_t batch, int64_t k, int64_t n, int64_t d, torch::ScalarType dtype) {
  torch::manual_seed(7);
  SparseCase c;
  // Distinct indices per row, like a top-k selection.
  c.indices = torch::rand({batch, n}).argsort(/*dim=*/1, /*descending=*/false).narrow(1, 0, k).contiguous();
  c.values = torch::randn({batch, k}, dtype);
  c.rows = torch::randn({n, d}, dtype);
  c.dense_z = torch::zeros({batch, n}, dtype).scatter_(1, c.indices, c.values);
  return c;
}

TEST_P(SparseKernels, DenseSparseMatmulMatchesDenseProduct) {
  for (auto dtype : {torch::kFloat, torch::kDouble}) {
    auto c = MakeCase(64, 8, 300, 40, dtype);
    auto expected = c.dense_z.mm(c.rows);
    EXPECT_LT(RelativeError(kernels::DenseSparseMatmul(c.values, c.indices, c.rows), expected),
              dtype == torch::kDouble ? 1e-12 : 1e-6);
  }
}

TEST_P(SparseKernels, MatmulAtSparseIndicesMatchesGatheredProduct) {
  auto c = MakeCase(64, 8, 300, 40, torch::kFloat);
  auto dense = torch::randn({64, 40});
  auto expected = dense.mm(c.rows.t()).gather(1, c.indices);
  EXPECT_LT(RelativeError(kernels::MatmulAtSparseIndices(dense, c.rows, c.indices), expected),
            1e-6);
}

TEST_P(SparseKernels, ScatterAddOuterByLatentMatchesTransposedProduct) {
  auto c = MakeCase(64, 8, 300, 40, torch::kFloat);
  auto dense = torch::randn({64, 40});
  auto out = torch::ones({300, 40});  // accumulates into existing contents
  kernels::ScatterAddOuterByLatent(c.values, c.indices, dense, out);
  auto expected = 1 + c.dense_z.t().mm(dense);
  EXPECT_LT(RelativeError(out, expected), 1e-6);
}

TEST_P(SparseKernels, RepeatedIndicesAccumulate) {
  // Padding (ReLU SAE) may repeat an index within a row; every entry must count.
  auto values = torch::tensor({{1.0f, 2.0f, 0.5f}});
  auto indices = torch::tensor({{3L, 3L, 1L}});
  auto rows = torch::arange(20, torch::kFloat).view({5, 4});
  auto out = kernels::DenseSparseMatmul(values, indices, rows);
  EXPECT_TRUE(torch::allclose(out, 3 * rows[3] + 0.5 * rows[1]));
  auto sums = kernels::SumByLatent(values, indices, 5);
  EXPECT_FLOAT_EQ(sums[3].item<float>(), 3.0f);
  EXPECT_FLOAT_EQ(sums[1].item<float>(), 0.5f);
  EXPECT_FLOAT_EQ(sums[0].item<float>(), 0.0f);
}

TEST_P(SparseKernels, Bf16RowsAccumulateInFloat) {
  auto c = MakeCase(32, 8, 200, 64, torch::kFloat);
  auto rows_bf16 = c.rows.to(torch::kBFloat16);
  auto expected = c.dense_z.mm(rows_bf16.to(torch::kFloat));
  auto out = kernels::DenseSparseMatmul(c.values, c.indices, rows_bf16);
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  EXPECT_LT(RelativeError(out, expected), 1e-2);  // bf16 output rounding, 8 mantissa bits
}

TEST_P(SparseKernels, RejectsOutOfRangeIndicesAndBadShapes) {
  auto values = torch::ones({2, 2});
  auto rows = torch::ones({4, 3});
  EXPECT_THROW(kernels::DenseSparseMatmul(values, torch::tensor({{0L, 4L}, {1L, 2L}}), rows),
               c10::Error);
  EXPECT_THROW(kernels::DenseSparseMatmul(values, torch::tensor({{0L, -1L}, {1L, 2L}}), rows),
               c10::Error);
  EXPECT_THROW(kernels::DenseSparseMatmul(values, torch::zeros({2, 3}, torch::kLong), rows),
               c10::Error);
  EXPECT_THROW(kernels::MatmulAtSparseIndices(torch::ones({2, 5}), rows,
                                              torch::zeros({2, 2}, torch::kLong)),
               c10::Error);
}

SAEGRID_INSTANTIATE_ON_KERNEL_PATHS(SparseKernels);

}  // namespace
}  // namespace saegrid
