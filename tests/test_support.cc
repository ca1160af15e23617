#include "tests/test_support.h"

#include <gtest/gtest.h>
#include <torch/torch.h>


namespace saegrid::testing {

double RelativeError(const torch::Tensor& actual, const torch::Tensor& expected) {
  const auto a = actual.detach().to(torch::kDouble);
  const auto e = expected.detach().to(torch::kDouble);
  return (a - e).norm().item<double>() / std::max(e.norm().item<double>(), 1e-30);
}

}  // namespace saegrid::testing
