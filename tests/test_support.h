// Helpers shared by the test suites.
#pragma once

#include <torch/types.h>

#include <filesystem>
#include <string>

namespace saegrid::testing {

// Norm-wise relative error ||actual - expected|| / max(||expected||, tiny), the tolerance
// measure the numerical tests state.
double RelativeError(const torch::Tensor& actual, const torch::Tensor& expected);

// A fresh directory under the system temp dir, removed when the object goes away.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

void WriteFile(const std::string& path, const std::string& contents);
std::string ReadFile(const std::string& path);

}  // namespace saegrid::testing
