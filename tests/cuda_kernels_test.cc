// The CUDA kernels (kernels/cuda/), reached through the public dispatchers on CUDA tensors,
// against two references on the same inputs: the portable path on the same CUDA tensors (forced)
// and the CPU kernels on CPU copies. Top-k: the same ids and values; everything else within 1e-5
// relative (norm-wise), bf16 outputs within one bf16 rounding of the portable path. Each test is
// skipped, saying so, on a machine without a GPU or a build without the CUDA kernels.
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/dispatch.h"
#include "kernels/fused_adam.h"
#include "kernels/running_topk.h"
#include "kernels/sparse_ops.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using testing::RelativeError;

constexpr double kTolerance = 1e-5;
const torch::Device kCuda(torch::kCUDA, 0);

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) {
      GTEST_SKIP() << "no CUDA device (torch::cuda::is_available() is false): the CUDA kernels were not run";
    }
    if (!kernels::CudaKernelsBuilt()) {
      GTEST_SKIP() << "this build has no CUDA kernels (LibTorch without CUDA): the CUDA kernels were not run";
    }
  }
};

// Sets LibTorch's deterministic-algorithms flag (which picks the grouped scatter) for a scope.
class ScopedDeterministic {
 public:
  explicit ScopedDeterministic(bool on)
      : previous_(at::globalContext().deterministicAlgorithms()),
        warn_only_(at::globalContext().deterministicAlgorithmsWarnOnly()) {
    at::globalContext().setDeterministicAlgorithms(on, false);
  }
  ~ScopedDeterministic() { at::globalContext().setDeterministicAlgorithms(previous_, warn_only_); }

 private:
  bool previous_, warn_only_;
};

template <typename T>
struct ThreePaths {
  T cuda, portable, cpu;
};

// `fn(device)` moves its (CPU) inputs to `device`, calls a kernel and returns CPU results: once
// on the CUDA kernels, once on the portable path with the same CUDA inputs, once on the CPU.
template <typename Fn>
auto OnThreePaths(Fn fn) -> ThreePaths<decltype(fn(kCuda))> {
  auto cuda = fn(kCuda);
  auto portable = [&] {
    kernels::ScopedPortableKernels force;
    return fn(kCuda);
  }();
  return {std::move(cuda), std::move(portable), fn(torch::Device(torch::kCPU))};
}

struct Selection {
  torch::Tensor values, indices;
};

// A top-k-like selection with padding: distinct ids per row, about half the values zero, and
// one id repeated within each row (padding may repeat ids; every entry counts).
Selection MakeSelection(int64_t batch, int64_t k, int64_t n) {
  Selection s;
  s.indices = torch::rand({batch, n}).argsort(/*dim=*/1, /*descending=*/false).narrow(1, 0, k).contiguous();
  s.indices.select(1, k - 1).copy_(s.indices.select(1, 0));
  s.values = torch::relu(torch::randn({batch, k}));
  return s;
}

// Few latents, so that each gathers many entries, and latent 7 in every token's selection: long
// runs for the grouped scatter, contention for the atomic one.
Selection MakeCrowdedSelection(int64_t batch, int64_t k, int64_t n) {
  Selection s = MakeSelection(batch, k, n);
  s.indices.select(1, 1).fill_(7);
  s.values.select(1, 1).uniform_(0.5, 1.5);
  return s;
}

std::string Name(torch::ScalarType dtype) { return c10::toString(dtype); }

TEST_F(CudaKernels, DenseSparseMatmul) {
  torch::manual_seed(31);
  const int64_t batch = 300, k = 32, n = 4096;
  const auto s = MakeSelection(batch, k, n);
  for (int64_t d : {768, 37}) {  // vectorised rows, and the scalar path
    const auto rows = torch::randn({n, d});
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      SCOPED_TRACE(Name(dtype) + " d " + std::to_string(d));
      const auto typed = rows.to(dtype);
      const auto r = OnThreePaths([&](const torch::Device& dev) {
        return kernels::DenseSparseMatmul(s.values.to(dev), s.indices.to(dev), typed.to(dev)).cpu();
      });
      EXPECT_EQ(r.cuda.scalar_type(), dtype);
      // The CUDA kernel adds in the CPU's order with the CPU's roundings: bf16 outputs agree too.
      EXPECT_LT(RelativeError(r.cuda, r.cpu), kTolerance);
      EXPECT_LT(RelativeError(r.cuda, r.portable), dtype == torch::kFloat ? kTolerance : 1e-2);
    }
  }
}

TEST_F(CudaKernels, MatmulAtSparseIndices) {
  torch::manual_seed(32);
  const int64_t batch = 300, k = 32, n = 4096;
  const auto s = MakeSelection(batch, k, n);
  for (int64_t d : {768, 37}) {
    const auto rows = torch::randn({n, d});
    const auto dense = torch::randn({batch, d});
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      SCOPED_TRACE(Name(dtype) + " d " + std::to_string(d));
      const auto typed = rows.to(dtype);
      const auto r = OnThreePaths([&](const torch::Device& dev) {
        return kernels::MatmulAtSparseIndices(dense.to(dev), typed.to(dev), s.indices.to(dev)).cpu();
      });
      EXPECT_EQ(r.cuda.scalar_type(), torch::kFloat);
      EXPECT_LT(RelativeError(r.cuda, r.cpu), kTolerance);
      EXPECT_LT(RelativeError(r.cuda, r.portable), dtype == torch::kFloat ? kTolerance : 1e-2);
    }
  }
}

// out = init + the scattered products, on `dev`, returned on the CPU.
torch::Tensor Scatter(const Selection& s, const torch::Tensor& dense, const torch::Tensor& init,
                      const torch::Device& dev) {
  auto out = init.to(dev).clone();
  kernels::ScatterAddOuterByLatent(s.values.to(dev), s.indices.to(dev), dense.to(dev), out);
  return out.cpu();
}

TEST_F(CudaKernels, ScatterAddOuterByLatentDeterministicIsBitwiseRepeatable) {
  torch::manual_seed(33);
  const int64_t batch = 512, k = 16, n = 200;
  const auto s = MakeCrowdedSelection(batch, k, n);
  for (int64_t d : {768, 37}) {
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      SCOPED_TRACE(Name(dtype) + " d " + std::to_string(d));
      const auto dense = torch::randn({batch, d});
      const auto init = torch::randn({n, d}).to(dtype);  // accumulates into what is there
      const auto cpu = Scatter(s, dense, init, torch::kCPU);
      const auto portable = [&] {
        kernels::ScopedPortableKernels force;
        return Scatter(s, dense, init, kCuda);
      }();
      torch::Tensor first, second;
      {
        ScopedDeterministic on(true);
        first = Scatter(s, dense, init, kCuda);
        second = Scatter(s, dense, init, kCuda);
      }
      EXPECT_TRUE(torch::equal(first, second)) << "the grouped scatter is not bitwise repeatable";
      EXPECT_LT(RelativeError(first, cpu), kTolerance);
      EXPECT_LT(RelativeError(first, portable), dtype == torch::kFloat ? kTolerance : 1e-2);
    }
  }
}

TEST_F(CudaKernels, ScatterAddOuterByLatentDefault) {
  torch::manual_seed(34);
  ScopedDeterministic off(false);
  for (int64_t n : {200, 4096}) {  // crowded latents (contended atomics), and a spread selection
    const int64_t batch = 512, k = 16;
    const auto s = n == 200 ? MakeCrowdedSelection(batch, k, n) : MakeSelection(batch, k, n);
    for (int64_t d : {768, 37}) {
      SCOPED_TRACE("n " + std::to_string(n) + " d " + std::to_string(d));
      const auto dense = torch::randn({batch, d});
      const auto init = torch::randn({n, d});
      const auto r = OnThreePaths([&](const torch::Device& dev) { return Scatter(s, dense, init, dev); });
      EXPECT_LT(RelativeError(r.cuda, r.cpu), kTolerance);
      EXPECT_LT(RelativeError(r.cuda, r.portable), kTolerance);
    }
  }
}

TEST_F(CudaKernels, SumByLatent) {
  torch::manual_seed(35);
  // Latent 7 in every row, most latents in none.
  const int64_t batch = 200, k = 32, n = 20000;
  const auto s = MakeCrowdedSelection(batch, k, n);
  const auto sum = [&](const torch::Device& dev) {
    return kernels::SumByLatent(s.values.to(dev), s.indices.to(dev), n).cpu();
  };
  for (bool deterministic : {true, false}) {
    SCOPED_TRACE(deterministic ? "deterministic" : "default");
    const auto r = OnThreePaths(sum);
    torch::Tensor cuda, again;
    {
      ScopedDeterministic mode(deterministic);
      cuda = sum(kCuda);
      again = sum(kCuda);
    }
    EXPECT_EQ(cuda.scalar_type(), torch::kFloat);
    if (deterministic) {
      EXPECT_TRUE(torch::equal(cuda, again));
    }
    EXPECT_LT(RelativeError(cuda, r.cpu), kTolerance);
    EXPECT_LT(RelativeError(cuda, r.portable), kTolerance);
    EXPECT_EQ(cuda.masked_select(r.cpu == 0).abs().sum().item<float>(), 0.0f);
  }
}

struct AdamCase {
  std::vector<int64_t> shape;
  bool unit_rows;
  double scale;
  const char* what;
};

const std::vector<AdamCase>& AdamCases() {
  static const std::vector<AdamCase> cases = {
      {{300, 768}, true, 1.0, "decoder rows held in registers"},
      {{300, 768}, false, 0.5, "2-D without the constraint, scaled"},
      {{64, 20000}, true, 0.7, "rows too long for registers (streamed)"},
      {{8, 20001}, true, 1.0, "long unvectorised rows (streamed)"},
      {{50, 37}, true, 1.0, "unvectorised rows"},
      {{10001}, false, 0.7, "flat, with an odd tail row past the 4096-element rows"},
  };
  return cases;
}

torch::Tensor StartingParameter(const AdamCase& c) {
  auto p = torch::randn(c.shape);
  if (c.unit_rows) p = p / p.norm(2, 1, true);
  return p;
}

void ExpectDeviceScalar(const torch::Tensor& t, const torch::Device& device) {
  EXPECT_EQ(t.dim(), 0);
  EXPECT_EQ(t.scalar_type(), torch::kDouble);
  EXPECT_EQ(t.device(), device);
}

TEST_F(CudaKernels, FusedAdamStep) {
  torch::manual_seed(36);
  for (const AdamCase& c : AdamCases()) {
    SCOPED_TRACE(c.what);
    const auto start = StartingParameter(c);
    std::vector<torch::Tensor> grads;
    for (int i = 0; i < 3; ++i) grads.push_back(torch::randn(c.shape) * 0.1);
    kernels::AdamHyperparameters h;
    h.lr = 3e-3;
    h.eps = 6.25e-10;
    h.grad_scale = c.scale;
    struct State {
      torch::Tensor p, m, v;
      std::vector<double> used_sq;
    };
    const auto run = [&](const torch::Device& dev) {
      State s{start.to(dev), torch::zeros(c.shape).to(dev), torch::zeros(c.shape).to(dev), {}};
      for (int64_t step = 1; step <= 3; ++step) {
        h.step = step;
        const auto used = kernels::FusedAdamStep(s.p, grads[step - 1].to(dev), s.m, s.v, h, c.unit_rows);
        ExpectDeviceScalar(used, dev);
        s.used_sq.push_back(used.item<double>());
      }
      return State{s.p.cpu(), s.m.cpu(), s.v.cpu(), s.used_sq};
    };
    const auto r = OnThreePaths(run);
    for (const State* other : {&r.cpu, &r.portable}) {
      SCOPED_TRACE(other == &r.cpu ? "against the CPU" : "against the portable path");
      EXPECT_LT(RelativeError(r.cuda.p, other->p), kTolerance);
      EXPECT_LT(RelativeError(r.cuda.m, other->m), kTolerance);
      EXPECT_LT(RelativeError(r.cuda.v, other->v), kTolerance);
      for (size_t i = 0; i < r.cuda.used_sq.size(); ++i) {
        EXPECT_NEAR(r.cuda.used_sq[i], other->used_sq[i], kTolerance * other->used_sq[i]);
      }
    }
    if (c.unit_rows) {
      EXPECT_LT((r.cuda.p.norm(2, 1) - 1).abs().max().item<double>(), 1e-5);
    }
  }
}

TEST_F(CudaKernels, FusedGradientSquaredNorm) {
  torch::manual_seed(37);
  for (const AdamCase& c : AdamCases()) {
    SCOPED_TRACE(c.what);
    const auto param = StartingParameter(c);
    const auto grad = torch::randn(c.shape) * 0.1;
    const auto r = OnThreePaths([&](const torch::Device& dev) {
      const auto sq = kernels::FusedGradientSquaredNorm(param.to(dev), grad.to(dev), c.unit_rows);
      ExpectDeviceScalar(sq, dev);
      return sq.item<double>();
    });
    EXPECT_NEAR(r.cuda, r.cpu, kTolerance * r.cpu);
    EXPECT_NEAR(r.cuda, r.portable, kTolerance * r.portable);
  }
}

// The encoder's use: chunks of a wide matrix offered in order, optionally only the dead columns.
std::pair<torch::Tensor, torch::Tensor> Chunked(const torch::Tensor& matrix, int64_t k, int64_t chunk,
                                                const torch::Device& dev,
                                                const torch::Tensor& dead_columns = torch::Tensor()) {
  kernels::RunningTopK running(matrix.size(0), k, dev);
  if (dev.is_cuda() && !kernels::PortableKernelsForced()) {
    EXPECT_EQ(running.implementation(), kernels::Implementation::kCuda);
  }
  for (int64_t begin = 0; begin < matrix.size(1); begin += chunk) {
    const int64_t width = std::min(chunk, matrix.size(1) - begin);
    const auto part = matrix.narrow(1, begin, width).contiguous().to(dev);
    if (dead_columns.defined()) {
      const auto mine = dead_columns.masked_select((dead_columns >= begin) & (dead_columns < begin + width)) - begin;
      running.Offer(part, begin, mine.to(dev));
    } else {
      running.Offer(part, begin);
    }
  }
  auto [values, ids] = running.Finish();
  return {values.cpu(), ids.cpu()};
}

using TopK = std::pair<torch::Tensor, torch::Tensor>;

void ExpectSame(const TopK& actual, const TopK& expected, bool compare_ids = true) {
  EXPECT_TRUE(torch::equal(actual.first, expected.first)) << "values differ";
  if (compare_ids) {
    EXPECT_TRUE(torch::equal(actual.second, expected.second)) << "ids differ";
  }
}

// Rows of distinct values in float32 and in bfloat16 (consecutive bf16 bit patterns from 1.0,
// shuffled per row), so that the ids are unambiguous on every path.
torch::Tensor Distinct(int64_t rows, int64_t cols, torch::ScalarType dtype) {
  const auto order = torch::rand({rows, cols}).argsort(/*dim=*/1, /*descending=*/false);
  if (dtype == torch::kFloat) return order.to(torch::kFloat) / 7.0 - 300;
  const auto bf16 = torch::arange(16256, 16256 + cols, torch::kShort).view(torch::kBFloat16);
  return bf16.unsqueeze(0).expand({rows, cols}).gather(1, order).contiguous();
}

TEST_F(CudaKernels, RunningTopKOverChunkingsAndDtypes) {
  torch::manual_seed(38);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const auto matrix = Distinct(48, 5000, dtype);
    for (int64_t k : {1, 32, 300, 1024}) {
      for (int64_t chunk : {5000, 2048, 333, 17}) {
        SCOPED_TRACE(Name(dtype) + " k " + std::to_string(k) + " chunk " + std::to_string(chunk));
        const auto r = OnThreePaths([&](const torch::Device& dev) { return Chunked(matrix, k, chunk, dev); });
        ExpectSame(r.cuda, r.cpu);
        ExpectSame(r.cuda, r.portable);
      }
    }
  }
}

TEST_F(CudaKernels, RunningTopKOnWideGaussianRows) {
  // Encoder-like chunks of 16384 latents, read once; bf16 brings many equal values.
  torch::manual_seed(39);
  const auto matrix = torch::randn({64, 20000});
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const auto typed = matrix.to(dtype);
    for (int64_t k : {32, 1024}) {
      SCOPED_TRACE(Name(dtype) + " k " + std::to_string(k));
      const auto r = OnThreePaths([&](const torch::Device& dev) { return Chunked(typed, k, 16384, dev); });
      ExpectSame(r.cuda, r.cpu);
      // The portable path may order a tie exactly at the k-th place either way (running_topk.h).
      ExpectSame(r.cuda, r.portable, /*compare_ids=*/dtype == torch::kFloat);
      EXPECT_TRUE(torch::equal(typed.to(torch::kFloat).gather(1, r.cuda.second), r.cuda.first));
    }
  }
}

TEST_F(CudaKernels, RunningTopKOverColumnSubsets) {
  torch::manual_seed(40);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const auto matrix = Distinct(40, 9000, dtype);
    // Many dead latents, and so few that the rows are padded.
    for (int64_t dead_count : {700, 40}) {
      const auto dead = std::get<0>(torch::randperm(9000).narrow(0, 0, dead_count).sort());
      for (int64_t k : {5, 64}) {
        SCOPED_TRACE(Name(dtype) + " dead " + std::to_string(dead_count) + " k " + std::to_string(k));
        const auto r = OnThreePaths([&](const torch::Device& dev) { return Chunked(matrix, k, 1000, dev, dead); });
        ExpectSame(r.cuda, r.cpu);
        ExpectSame(r.cuda, r.portable);
      }
    }
  }
}

TEST_F(CudaKernels, RunningTopKTiesAndNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const auto on = [](const torch::Tensor& matrix, int64_t k, int64_t chunk) {
    return OnThreePaths([&](const torch::Device& dev) { return Chunked(matrix, k, chunk, dev); });
  };
  {
    // Ties go to the lower latent id, within a chunk and across chunks.
    auto row = torch::zeros({1, 300});
    row[0][250] = 5;
    row[0][40] = 3;
    row[0][200] = 3;
    row[0][120] = 3;
    const auto r = on(row, 3, 64);
    EXPECT_TRUE(torch::equal(r.cuda.first, torch::tensor({{5.0f, 3.0f, 3.0f}})));
    EXPECT_TRUE(torch::equal(r.cuda.second, torch::tensor({{250L, 40L, 120L}})));
    ExpectSame(r.cuda, r.cpu);
  }
  {
    // Every value equal: the k-th place is a tie, the lowest ids win.
    const auto equal = torch::full({4, 3000}, 0.25f);
    const auto r = on(equal, 32, 1000);
    EXPECT_TRUE(torch::equal(r.cuda.second, torch::arange(32, torch::kLong).expand({4, 32})));
    ExpectSame(r.cuda, r.cpu);
    ExpectSame(r.cuda, r.portable, /*compare_ids=*/false);
  }
  {
    // NaN is never selected; a row offered fewer than k others is padded with -inf and id 0.
    torch::manual_seed(41);
    auto matrix = torch::randn({8, 2500});
    matrix.masked_fill_(torch::rand({8, 2500}) < 0.3, nan);
    matrix[0].fill_(nan);
    matrix[1].fill_(nan);
    matrix[1][1234] = 2;
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      SCOPED_TRACE(Name(dtype));
      const auto r = on(matrix.to(dtype), 16, 700);
      ExpectSame(r.cuda, r.cpu);
      ExpectSame(r.cuda, r.portable, /*compare_ids=*/dtype == torch::kFloat);
      EXPECT_TRUE(torch::equal(r.cuda.first[0], torch::full({16}, -inf)));
      EXPECT_TRUE(torch::equal(r.cuda.second[0], torch::zeros({16}, torch::kLong)));
      EXPECT_EQ(r.cuda.second[1][0].item<int64_t>(), 1234);
      EXPECT_EQ(r.cuda.first[1][1].item<float>(), -inf);
    }
  }
  // A k beyond the kernel's shared memory goes to the portable path.
  EXPECT_EQ(kernels::RunningTopK(2, 1025, kCuda).implementation(), kernels::Implementation::kPortable);
}

}  // namespace
}  // namespace saegrid
