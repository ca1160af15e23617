#include "tests/test_support.h"

#include <gtest/gtest.h>
#include <torch/torch.h>


namespace saegrid::testing {

double RelativeError(const torch::Tensor& actual, const torch::Tensor& expected) {
  const auto a = actual.detach().to(torch::kDouble);
  const auto e = expected.detach().to(torch::kDouble);
  return (a - e).norm().item<double>() / std::max(e.norm().item<double>(), 1e-30);
}

std::unique_ptr<Trainer> Make(const TrainConfig& config) {
  auto t = Trainer::Create(config);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

void KernelPathTest::SetUp() {
  forced_.emplace(GetParam() == "portable");
  ASSERT_STREQ(kernels::ImplementationName(kernels::ImplementationFor(torch::kCPU)), GetParam().c_str());
}

void KernelPathTest::TearDown() { forced_.reset(); }

}  // namespace saegrid::testing
