#include "engine/eval/decoder_comparison.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace saegrid {
namespace {

constexpr int64_t kChunkElements = int64_t{1} << 24;
constexpr int kBins = 20;

std::string Shape(const torch::Tensor& t) {
  return t.defined() ? c10::str(t.sizes()) : std::string("undefined");
}

absl::Status CheckRows(const torch::Tensor& t, const char* name) {
  if (!t.defined() || t.dim() != 2 || t.size(0) == 0 || t.size(1) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected a non-empty [rows, d] matrix, got ", Shape(t)));
  }
  if (!t.is_floating_point()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": expected a floating-point tensor, got ",
                                                   c10::toString(t.scalar_type())));
  }
  return absl::OkStatus();
}

// Unit rows; a zero row stays zero, so its cosine with anything is 0. The norm is taken in
// float64 so that tiny or huge rows normalise as well as ordinary ones.
torch::Tensor UnitRows(const torch::Tensor& rows, torch::ScalarType dtype) {
  const auto r = rows.to(torch::kDouble);
  const auto norm = r.norm(2, 1, true);
  return torch::where(norm > 0, r / norm, torch::zeros_like(r)).to(dtype);
}

}  // namespace

absl::StatusOr<DecoderComparison> CompareDecoders(const torch::Tensor& smaller_rows,
                                                  const torch::Tensor& larger_rows, double threshold,
                                                  int64_t chunk_rows) {
  torch::NoGradGuard no_grad;
  SAEGRID_RETURN_IF_ERROR(CheckRows(smaller_rows, "smaller_rows"));
  SAEGRID_RETURN_IF_ERROR(CheckRows(larger_rows, "larger_rows"));
  if (smaller_rows.size(1) != larger_rows.size(1)) {
    return absl::InvalidArgumentError(absl::StrCat("smaller_rows ", Shape(smaller_rows), " and larger_rows ",
                                                   Shape(larger_rows), " have different widths d"));
  }
  if (smaller_rows.device() != larger_rows.device()) {
    return absl::InvalidArgumentError(absl::StrCat("smaller_rows is on ", smaller_rows.device().str(),
                                                   ", larger_rows on ", larger_rows.device().str()));
  }
  if (!(threshold >= -1 && threshold <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("threshold: must lie in [-1, 1], got ", threshold));
  }
  if (chunk_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("chunk_rows: must be >= 0, got ", chunk_rows));
  }
  // float32 is ample for cosines (and what the matmul of a 32k x 32k comparison can afford);
  // float64 inputs keep float64.
  const auto dtype = (smaller_rows.scalar_type() == torch::kDouble || larger_rows.scalar_type() == torch::kDouble)
                         ? torch::kDouble
                         : torch::kFloat;
  const int64_t n_s = smaller_rows.size(0), n_l = larger_rows.size(0);
  const int64_t chunk = chunk_rows > 0 ? chunk_rows : std::max<int64_t>(1, kChunkElements / n_s);
  const auto small_t = UnitRows(smaller_rows, dtype).t().contiguous();  // [d, n_s]

  DecoderComparison c;
  c.threshold = threshold;
  c.max_cosine = torch::empty({n_l}, small_t.options());
  c.nearest = torch::empty({n_l}, small_t.options().dtype(torch::kLong));
  for (int64_t begin = 0; begin < n_l; begin += chunk) {
    const int64_t len = std::min(chunk, n_l - begin);
    const auto large = larger_rows.narrow(0, begin, len);
    const auto cos = UnitRows(large, dtype).mm(small_t);  // [len, n_s]
    auto [best, arg] = cos.max(1);
    // Rounding can put a unit row's cosine with itself a hair past 1.
    c.max_cosine.narrow(0, begin, len).copy_(best.clamp(-1, 1));
    const auto zero_row = (large != 0).any(1).logical_not();
    c.nearest.narrow(0, begin, len).copy_(arg.masked_fill(zero_row, -1));
  }

  const auto mc = c.max_cosine.to(torch::kCPU, torch::kDouble).contiguous();
  const double* v = mc.data_ptr<double>();
  c.histogram.assign(kBins, 0);
  int64_t reconstruction = 0;
  double sum = 0;
  for (int64_t i = 0; i < n_l; ++i) {
    reconstruction += v[i] >= threshold;
    sum += v[i];
    const int bin = static_cast<int>(std::floor((v[i] + 1) * (kBins / 2.0)));
    c.histogram[std::clamp(bin, 0, kBins - 1)]++;
  }
  c.reconstruction_fraction = static_cast<double>(reconstruction) / n_l;
  c.novel_fraction = static_cast<double>(n_l - reconstruction) / n_l;
  c.mean_max_cosine = sum / n_l;
  return c;
}

}  // namespace saegrid
