// The portable kernels (LibTorch operators only: what a device without its own kernels runs)
// against the CPU kernels on the same inputs, at encoder-like sizes: the same top-k indices, and
// values within 1e-5 relative. The routing itself is checked first.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <limits>

#include "kernels/dispatch.h"
#include "kernels/fused_adam.h"
#include "kernels/running_topk.h"
#include "kernels/sparse_ops.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using testing::RelativeError;

constexpr double kTolerance = 1e-5;

// Runs `fn` once on the CPU kernels and once on the portable ones.
template <typename Fn>
auto OnBothPaths(Fn fn) {
  auto cpu = fn();
  kernels::ScopedPortableKernels portable;
  return std::make_pair(cpu, fn());
}

TEST(KernelDispatch, RoutesByDeviceAndHonoursTheSwitch) {
  using kernels::Implementation;
  EXPECT_EQ(kernels::ImplementationFor(torch::kCPU), Implementation::kCpu);
  // CUDA tensors go to kernels/cuda/ only when it was built; otherwise portable.
  EXPECT_EQ(kernels::ImplementationFor(torch::Device(torch::kCUDA, 0)),
            kernels::CudaKernelsBuilt() ? Implementation::kCuda : Implementation::kPortable);
  // Any other device: portable.
  EXPECT_EQ(kernels::ImplementationFor(torch::Device(torch::kMeta)), Implementation::kPortable);
  {
    kernels::ScopedPortableKernels forced;
    EXPECT_TRUE(kernels::PortableKernelsForced());
    EXPECT_EQ(kernels::ImplementationFor(torch::kCPU), Implementation::kPortable);
    EXPECT_EQ(kernels::ImplementationFor(torch::Device(torch::kCUDA, 0)), Implementation::kPortable);
    {
      kernels::ScopedPortableKernels unforced(false);
      EXPECT_EQ(kernels::ImplementationFor(torch::kCPU), Implementation::kCpu);
    }
    EXPECT_EQ(kernels::ImplementationFor(torch::kCPU), Implementation::kPortable);
  }
  EXPECT_FALSE(kernels::PortableKernelsForced());
  EXPECT_STREQ(kernels::ImplementationName(Implementation::kPortable), "portable");
}

struct Selection {
  torch::Tensor values, indices;
};

// A top-k-like selection: distinct ids per row, some zero (padding) values.
Selection MakeSelection(int64_t batch, int64_t k, int64_t n) {
  Selection s;
  s.indices = torch::rand({batch, n}).argsort(/*dim=*/1, /*descending=*/false).narrow(1, 0, k).contiguous();
  s.values = torch::relu(torch::randn({batch, k}));
  return s;
}

TEST(PortableKernels, SparseOpsAgreeWithTheCpuKernels) {
  torch::manual_seed(21);
  const int64_t batch = 300, k = 32, n = 4096, d = 96;
  const auto s = MakeSelection(batch, k, n);
  const auto rows = torch::randn({n, d});
  const auto dense = torch::randn({batch, d});
  {
    auto [cpu, portable] = OnBothPaths([&] { return kernels::DenseSparseMatmul(s.values, s.indices, rows); });
    EXPECT_LT(RelativeError(portable, cpu), kTolerance);
  }
  {
    auto [cpu, portable] = OnBothPaths([&] { return kernels::MatmulAtSparseIndices(dense, rows, s.indices); });
    EXPECT_EQ(portable.scalar_type(), cpu.scalar_type());
    EXPECT_LT(RelativeError(portable, cpu), kTolerance);
  }
  {
    auto [cpu, portable] = OnBothPaths([&] {
      auto out = torch::ones({n, d});  // accumulates into what is there
      kernels::ScatterAddOuterByLatent(s.values, s.indices, dense, out);
      return out;
    });
    EXPECT_LT(RelativeError(portable, cpu), kTolerance);
  }
  {
    auto [cpu, portable] = OnBothPaths([&] { return kernels::SumByLatent(s.values, s.indices, n); });
    EXPECT_LT(RelativeError(portable, cpu), kTolerance);
  }
  {
    // bf16 rows accumulate in float32 on both; the output is bf16.
    const auto rows_bf16 = rows.to(torch::kBFloat16);
    auto [cpu, portable] = OnBothPaths([&] { return kernels::DenseSparseMatmul(s.values, s.indices, rows_bf16); });
    EXPECT_EQ(portable.scalar_type(), torch::kBFloat16);
    EXPECT_LT(RelativeError(portable, cpu), 1e-2);  // one bf16 rounding of the same sum
  }
}

TEST(PortableKernels, RepeatedIndicesAndOutOfRangeIdsBehaveAsOnTheCpu) {
  kernels::ScopedPortableKernels portable;
  const auto values = torch::tensor({{1.0f, 2.0f, 0.5f}});
  const auto indices = torch::tensor({{3L, 3L, 1L}});
  const auto rows = torch::arange(20, torch::kFloat).view({5, 4});
  EXPECT_TRUE(torch::allclose(kernels::DenseSparseMatmul(values, indices, rows), 3 * rows[3] + 0.5 * rows[1]));
  EXPECT_THROW(kernels::DenseSparseMatmul(values, torch::tensor({{0L, 5L, 1L}}), rows), c10::Error);
  EXPECT_THROW(kernels::SumByLatent(values, torch::tensor({{0L, -1L, 1L}}), 5), c10::Error);
}

// The encoder's use: chunks of a wide matrix, main selection and AuxK over a column subset.
std::pair<torch::Tensor, torch::Tensor> Chunked(const torch::Tensor& matrix, int64_t k, int64_t chunk,
                                                const torch::Tensor& dead_columns = torch::Tensor()) {
  kernels::RunningTopK running(matrix.size(0), k);
  for (int64_t begin = 0; begin < matrix.size(1); begin += chunk) {
    const int64_t width = std::min(chunk, matrix.size(1) - begin);
    const auto part = matrix.narrow(1, begin, width).contiguous();
    if (dead_columns.defined()) {
      const auto mine = dead_columns.masked_select((dead_columns >= begin) & (dead_columns < begin + width)) - begin;
      running.Offer(part, begin, mine);
    } else {
      running.Offer(part, begin);
    }
  }
  return running.Finish();
}

TEST(PortableKernels, RunningTopKAgreesWithTheCpuHeaps) {
  torch::manual_seed(22);
  const auto matrix = torch::randn({128, 9000});
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    // Distinct values in either dtype (ties at the k-th place may go either way on the portable
    // path, kernels/running_topk.h): in bf16, consecutive bit patterns from 1.0, shuffled per row.
    const auto distinct_bf16 = torch::arange(16256, 16256 + 9000, torch::kShort).view(torch::kBFloat16);
    const auto shuffled = distinct_bf16.unsqueeze(0).expand({128, 9000})
                              .gather(1, torch::rand({128, 9000}).argsort(/*dim=*/1, /*descending=*/false));
    const auto typed = dtype == torch::kFloat ? matrix : shuffled.contiguous();
    for (int64_t chunk : {9000, 2048, 333}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " chunk " + std::to_string(chunk));
      auto [cpu, portable] = OnBothPaths([&] { return Chunked(typed, 32, chunk); });
      EXPECT_TRUE(torch::equal(portable.second, cpu.second)) << "indices differ";
      EXPECT_LT(RelativeError(portable.first, cpu.first), kTolerance);
    }
  }
  // AuxK: only the dead columns (sorted), fewer of them than k in some chunks.
  const auto dead = std::get<0>(torch::randperm(9000).narrow(0, 0, 700).sort());
  auto [cpu, portable] = OnBothPaths([&] { return Chunked(matrix, 64, 1000, dead); });
  EXPECT_TRUE(torch::equal(portable.second, cpu.second));
  EXPECT_LT(RelativeError(portable.first, cpu.first), kTolerance);
}

TEST(PortableKernels, RunningTopKPadsRowsAndNeverSelectsNaN) {
  kernels::ScopedPortableKernels portable;
  auto chunk = torch::tensor({{1.0f, std::nanf(""), 3.0f}, {std::nanf(""), std::nanf(""), 2.0f}});
  kernels::RunningTopK running(2, 4);
  EXPECT_EQ(running.implementation(), kernels::Implementation::kPortable);
  running.Offer(chunk, 10);
  const auto [values, ids] = running.Finish();
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(torch::equal(values, torch::tensor({{3.0f, 1.0f, -inf, -inf}, {2.0f, -inf, -inf, -inf}})));
  EXPECT_TRUE(torch::equal(ids, torch::tensor({{12L, 10L, 0L, 0L}, {12L, 0L, 0L, 0L}})));
}

TEST(PortableKernels, RunningTopKOrdersTiesByLatentIdAcrossChunks) {
  kernels::ScopedPortableKernels portable;
  // Equal values in two chunks: the earlier (lower) ids win and come first.
  kernels::RunningTopK running(1, 3);
  running.Offer(torch::tensor({{5.0f, 1.0f, 5.0f}}), 0);
  running.Offer(torch::tensor({{5.0f, 7.0f}}), 3);
  const auto [values, ids] = running.Finish();
  EXPECT_TRUE(torch::equal(values, torch::tensor({{7.0f, 5.0f, 5.0f}})));
  EXPECT_TRUE(torch::equal(ids, torch::tensor({{4L, 0L, 2L}})));
}

TEST(PortableKernels, FusedAdamAgreesWithTheCpuPass) {
  torch::manual_seed(23);
  kernels::AdamHyperparameters h;
  h.lr = 3e-3;
  h.eps = 6.25e-10;
  h.grad_scale = 0.7;
  // A decoder ([n, d], unit rows) and a flat vector with a tail past the 4096-element rows.
  for (auto [shape, unit_rows] : {std::make_pair(std::vector<int64_t>{500, 64}, true),
                                  std::make_pair(std::vector<int64_t>{10000}, false)}) {
    SCOPED_TRACE(unit_rows ? "unit-norm rows" : "flat");
    auto start = torch::randn(shape);
    if (unit_rows) start = start / start.norm(2, 1, true);
    struct State {
      torch::Tensor p, m, v;
      double sq = 0, norm_sq = 0;
    };
    auto run = [&] {
      State s{start.clone(), torch::zeros(shape), torch::zeros(shape)};
      torch::manual_seed(24);
      for (int64_t step = 1; step <= 3; ++step) {
        h.step = step;
        const auto grad = torch::randn(shape) * 0.1;
        s.norm_sq = kernels::FusedGradientSquaredNorm(s.p, grad, unit_rows).item<double>();
        s.sq = kernels::FusedAdamStep(s.p, grad, s.m, s.v, h, unit_rows).item<double>();
      }
      return s;
    };
    auto [cpu, portable] = OnBothPaths(run);
    EXPECT_LT(RelativeError(portable.p, cpu.p), kTolerance);
    EXPECT_LT(RelativeError(portable.m, cpu.m), kTolerance);
    EXPECT_LT(RelativeError(portable.v, cpu.v), kTolerance);
    EXPECT_NEAR(portable.sq, cpu.sq, kTolerance * cpu.sq);
    EXPECT_NEAR(portable.norm_sq, cpu.norm_sq, kTolerance * cpu.norm_sq);
  }
}

}  // namespace
}  // namespace saegrid
