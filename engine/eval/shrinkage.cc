#include "engine/eval/shrinkage.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace saegrid {
namespace {

// The gathered decoder rows of a chunk of tokens, [chunk, k, d] float64, stay about this size.
constexpr int64_t kChunkElements = int64_t{1} << 22;

std::string Shape(const torch::Tensor& t) {
  return t.defined() ? c10::str(t.sizes()) : std::string("undefined");
}

absl::Status CheckFloating(const torch::Tensor& t, const char* name) {
  if (!t.is_floating_point()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": expected a floating-point tensor, got ",
                                                   c10::toString(t.scalar_type())));
  }
  return absl::OkStatus();
}

absl::Status CheckInputs(const torch::Tensor& x, const torch::Tensor& indices, const torch::Tensor& acts,
                         const torch::Tensor& w_dec, const torch::Tensor& b_pre, int64_t iterations) {
  if (!x.defined() || x.dim() != 2 || x.size(0) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("x: expected [N, d] with N > 0, got ", Shape(x)));
  }
  SAEGRID_RETURN_IF_ERROR(CheckFloating(x, "x"));
  const int64_t n_tokens = x.size(0), d = x.size(1);
  if (!w_dec.defined() || w_dec.dim() != 2 || w_dec.size(1) != d) {
    return absl::InvalidArgumentError(absl::StrCat("w_dec: expected [n, d] with d = ", d, " (x is ",
                                                   Shape(x), "), got ", Shape(w_dec)));
  }
  SAEGRID_RETURN_IF_ERROR(CheckFloating(w_dec, "w_dec"));
  if (!b_pre.defined() || b_pre.dim() != 1 || b_pre.size(0) != d) {
    return absl::InvalidArgumentError(
        absl::StrCat("b_pre: expected [", d, "] (x is ", Shape(x), "), got ", Shape(b_pre)));
  }
  SAEGRID_RETURN_IF_ERROR(CheckFloating(b_pre, "b_pre"));
  if (!indices.defined() || indices.dim() != 2 || indices.size(0) != n_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("indices: expected [N, k] with N = ", n_tokens,
                                                   " (x is ", Shape(x), "), got ", Shape(indices)));
  }
  if (indices.is_floating_point() || indices.is_complex() || indices.scalar_type() == torch::kBool) {
    return absl::InvalidArgumentError(absl::StrCat("indices: expected an integer tensor, got ",
                                                   c10::toString(indices.scalar_type())));
  }
  if (!acts.defined() || !acts.sizes().equals(indices.sizes())) {
    return absl::InvalidArgumentError(absl::StrCat("acts: expected the shape of indices ", Shape(indices),
                                                   ", got ", Shape(acts)));
  }
  SAEGRID_RETURN_IF_ERROR(CheckFloating(acts, "acts"));
  if (indices.numel() > 0) {
    const int64_t lo = indices.min().item<int64_t>(), hi = indices.max().item<int64_t>();
    if (lo < 0 || hi >= w_dec.size(0)) {
      return absl::InvalidArgumentError(absl::StrCat("indices: entries must lie in [0, ", w_dec.size(0),
                                                     ") (the rows of w_dec), found [", lo, ", ", hi, "]"));
    }
    if (!(torch::isfinite(acts) & (acts >= 0)).all().item<bool>()) {
      return absl::InvalidArgumentError("acts: every entry must be finite and >= 0");
    }
  }
  if (iterations < 0) {
    return absl::InvalidArgumentError(absl::StrCat("iterations: must be >= 0, got ", iterations));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ShrinkageResult> RefineActivations(const torch::Tensor& x, const torch::Tensor& indices,
                                                  const torch::Tensor& acts, const torch::Tensor& w_dec,
                                                  const torch::Tensor& b_pre, int64_t iterations) {
  torch::NoGradGuard no_grad;
  SAEGRID_RETURN_IF_ERROR(CheckInputs(x, indices, acts, w_dec, b_pre, iterations));
  const auto device = x.device();
  const auto f64 = torch::TensorOptions().dtype(torch::kDouble).device(device);
  const int64_t n_tokens = x.size(0), d = x.size(1), k = indices.size(1);
  const int64_t chunk = std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, k * d));
  const auto w = w_dec.to(device);
  const auto bp = b_pre.to(f64);

  // The mean row first, so the total variance is summed about it rather than recovered from
  // the difference of two large sums.
  auto row_sum = torch::zeros({d}, f64);
  for (int64_t begin = 0; begin < n_tokens; begin += chunk) {
    row_sum += x.narrow(0, begin, std::min(chunk, n_tokens - begin)).to(f64).sum(0);
  }
  const auto mean_row = row_sum / static_cast<double>(n_tokens);

  ShrinkageResult r;
  r.tokens = n_tokens;
  r.iterations = iterations;
  r.refined = torch::zeros_like(acts);
  auto variance = torch::zeros({}, f64);
  auto err_before = torch::zeros({}, f64);
  auto err_after = torch::zeros({}, f64);
  auto ratio_sum = torch::zeros({}, f64);
  auto coded = torch::zeros({}, f64);
  for (int64_t begin = 0; begin < n_tokens; begin += chunk) {
    const int64_t len = std::min(chunk, n_tokens - begin);
    const auto xc = x.narrow(0, begin, len).to(f64);
    variance += (xc - mean_row).pow(2).sum();
    const auto target = xc - bp;  // [len, d]
    const auto a0 = acts.narrow(0, begin, len).to(f64);
    const auto active = (a0 > 0).to(torch::kDouble);
    const auto idx = indices.narrow(0, begin, len).to(device, torch::kLong);
    // Inactive rows are zeroed, so their coefficients see a zero gradient and stay 0.
    const auto rows = w.index_select(0, idx.reshape(-1)).to(torch::kDouble).view({len, k, d}) *
                      active.unsqueeze(2);
    const auto gram = torch::bmm(rows, rows.transpose(1, 2));                // [len, k, k]
    const auto corr = torch::bmm(rows, target.unsqueeze(2)).squeeze(2);       // [len, k]
    // f(a) = a^T G a / 2 - c^T a is the squared error / 2 up to a constant; its gradient
    // G a - c is Lipschitz with constant lambda_max(G).
    auto objective = [&](const torch::Tensor& a) {
      return 0.5 * (a * torch::bmm(gram, a.unsqueeze(2)).squeeze(2)).sum(1) - (corr * a).sum(1);
    };
    auto a = a0 * active;
    if (k > 0 && iterations > 0) {
      const auto lipschitz = torch::linalg_eigvalsh(gram, "L").select(1, k - 1);
      // A token with no active latent has G = 0 and a zero gradient; any step leaves it alone.
      const auto step = (1.0 / (lipschitz * (1 + 1e-12)).clamp_min(1e-300)).unsqueeze(1);
      auto fa = objective(a);
      auto prev = a;
      auto y = a;
      double t = 1;
      for (int64_t it = 0; it < iterations; ++it) {
        const auto grad = torch::bmm(gram, y.unsqueeze(2)).squeeze(2) - corr;
        const auto z = (y - step * grad).clamp_min(0) * active;
        const auto fz = objective(z);
        // MFISTA: keep the better of the new point and the last, so the objective never rises.
        const auto better = (fz <= fa).unsqueeze(1);
        prev = a;
        a = torch::where(better, z, a);
        fa = torch::minimum(fz, fa);
        const double t_next = (1 + std::sqrt(1 + 4 * t * t)) / 2;
        y = a + (t / t_next) * (z - a) + ((t - 1) / t_next) * (a - prev);
        t = t_next;
      }
    }
    auto residual_sq = [&](const torch::Tensor& coef) {
      return (target - torch::bmm(coef.unsqueeze(1), rows).squeeze(1)).pow(2).sum();
    };
    err_before += residual_sq(a0 * active);
    err_after += residual_sq(a);
    const auto before_sum = a0.sum(1);
    const auto has_code = before_sum > 0;
    ratio_sum += torch::where(has_code, a.sum(1) / before_sum, torch::zeros_like(before_sum)).sum();
    coded += has_code.sum();
    r.refined.narrow(0, begin, len).copy_(a);
  }
  const double total = std::max(variance.item<double>(), 1e-30);
  r.fvu_before = err_before.item<double>() / total;
  r.fvu_after = err_after.item<double>() / total;
  const double n_coded = coded.item<double>();
  r.mean_ratio = n_coded > 0 ? ratio_sum.item<double>() / n_coded : 0;
  return r;
}

}  // namespace saegrid
