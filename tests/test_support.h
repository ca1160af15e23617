// Helpers shared by the test suites.
#pragma once

#include <gtest/gtest.h>
#include <torch/types.h>

#include "engine/trainer.h"
#include "kernels/dispatch.h"
#include "tests/process_support.h"

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace saegrid::testing {

// Norm-wise relative error ||actual - expected|| / max(||expected||, tiny), the tolerance
// measure the numerical tests state.
double RelativeError(const torch::Tensor& actual, const torch::Tensor& expected);

// Trainer::Create, failing the test (and returning null) when it does not succeed.
std::unique_ptr<Trainer> Make(const TrainConfig& config);

// A fixture for suites that run once per kernel implementation a CPU machine has: "cpu"
// (kernels/cpu/) and "portable" (kernels/portable/, forced; what a device without its own kernels
// runs). Instantiate with SAEGRID_INSTANTIATE_ON_KERNEL_PATHS(Suite).
class KernelPathTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override;
  void TearDown() override;

 private:
  std::optional<kernels::ScopedPortableKernels> forced_;
};

#define SAEGRID_INSTANTIATE_ON_KERNEL_PATHS(suite)                                        \
  INSTANTIATE_TEST_SUITE_P(Kernels, suite, ::testing::Values("cpu", "portable"),         \
                           [](const ::testing::TestParamInfo<std::string>& info) {       \
                             return info.param;                                          \
                           })

}  // namespace saegrid::testing
