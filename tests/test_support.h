// Helpers shared by the test suites.
#pragma once

#include <torch/types.h>

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

}  // namespace saegrid::testing
