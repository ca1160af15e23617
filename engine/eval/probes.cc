#include "engine/eval/probes.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "absl/strings/str_cat.h"

namespace saegrid {
namespace {

// Working set of one fit: a handful of [N, chunk] float64 tensors.
constexpr int64_t kChunkElements = int64_t{1} << 21;
// A Newton step on a logistic loss rarely needs halving; 30 halvings is a step of ~1e-9.
constexpr int kMaxHalvings = 30;

struct ColumnFits {
  torch::Tensor weight;  // [m], standardised units
  torch::Tensor bias;    // [m]
  torch::Tensor loss;    // [m], cross-entropy without the ridge
};

// Mean cross-entropy of sigmoid(w * z + b) for each column of z, and that plus the ridge. With
// y in {0, 1}, -log p(y) = softplus((1 - 2y) * eta), written so that it neither overflows nor
// loses the small losses of a confident, correct probe.
std::pair<torch::Tensor, torch::Tensor> Objective(const torch::Tensor& z, const torch::Tensor& sign,
                                                  const torch::Tensor& w, const torch::Tensor& b) {
  const auto u = (z * w + b) * sign;
  const auto bce = (u.clamp_min(0) + (-u.abs()).exp().log1p()).mean(0);
  return {bce, bce + 0.5 * kProbeRidge * w * w};
}

// Newton-Raphson on every column of the standardised z [N, m] at once, for labels y [N, 1].
// Starts at the constant probe (w = 0, b = the prior logit), so no column ends worse than it.
// Each iteration works on the columns still moving only (most settle in a few steps, a few take
// many), so the cost follows the columns' own convergence.
ColumnFits FitColumns(const torch::Tensor& z, const torch::Tensor& y, double prior_logit) {
  const int64_t m = z.size(1);
  const auto opts = z.options();
  auto w = torch::zeros({m}, opts);
  auto b = torch::full({m}, prior_logit, opts);
  const auto sign = 1 - 2 * y;
  torch::Tensor bce, obj;
  std::tie(bce, obj) = Objective(z, sign, w, b);
  // A column stops once its own step is below the tolerance, so its fit does not depend on the
  // other columns it shares a chunk with.
  auto active = torch::arange(m, opts.dtype(torch::kLong));
  auto za = z;
  for (int iter = 0; iter < kProbeMaxIterations && active.numel() > 0; ++iter) {
    auto wa = w.index_select(0, active), ba = b.index_select(0, active);
    auto bcea = bce.index_select(0, active), obja = obj.index_select(0, active);
    const auto p = torch::sigmoid(za * wa + ba);
    const auto r = p - y;
    const auto s = p * (1 - p);
    const auto sz = s * za;
    const auto gw = (r * za).mean(0) + kProbeRidge * wa;
    const auto gb = r.mean(0);
    const auto hww = (sz * za).mean(0) + kProbeRidge;
    const auto hwb = sz.mean(0);
    const auto hbb = s.mean(0);
    const auto det = hww * hbb - hwb * hwb;
    auto dw = (hbb * gw - hwb * gb) / det;
    auto db = (hww * gb - hwb * gw) / det;
    // A singular Hessian (a column whose probe saturated) ends that column's fit, not in a NaN.
    const auto finite = torch::isfinite(dw) & torch::isfinite(db);
    const auto done = ~finite | (torch::maximum(dw.abs(), db.abs()) < kProbeStepTolerance);
    dw = torch::where(done, torch::zeros_like(dw), dw);
    db = torch::where(done, torch::zeros_like(db), db);
    // Backtracking, per column: halve until the objective does not rise (allowing rounding).
    auto t = torch::ones_like(wa);
    auto settled = done.clone();
    for (int h = 0; h < kMaxHalvings && !settled.all().item<bool>(); ++h) {
      const auto cw = wa - t * dw;
      const auto cb = ba - t * db;
      torch::Tensor cbce, cobj;
      std::tie(cbce, cobj) = Objective(za, sign, cw, cb);
      const auto slack = 4 * std::numeric_limits<double>::epsilon() * obja.abs();
      const auto take = (cobj <= obja + slack) & ~settled;
      wa = torch::where(take, cw, wa);
      ba = torch::where(take, cb, ba);
      bcea = torch::where(take, cbce, bcea);
      obja = torch::where(take, cobj, obja);
      settled = settled | take;
      t = torch::where(settled, t, t * 0.5);
    }
    w.index_copy_(0, active, wa);
    b.index_copy_(0, active, ba);
    bce.index_copy_(0, active, bcea);
    obj.index_copy_(0, active, obja);
    const auto moving = (~done).nonzero().view({-1});
    if (moving.numel() < active.numel()) {
      active = active.index_select(0, moving);
      za = za.index_select(1, moving);
    }
  }
  return {w, b, bce};
}

std::string Shape(const torch::Tensor& t) {
  return t.defined() ? c10::str(t.sizes()) : std::string("undefined");
}

}  // namespace

absl::StatusOr<BestProbeTracker> BestProbeTracker::Create(const torch::Tensor& labels) {
  return Create(labels, 0);
}

absl::StatusOr<BestProbeTracker> BestProbeTracker::Create(const torch::Tensor& labels,
                                                          int64_t chunk_columns) {
  torch::NoGradGuard no_grad;
  if (!labels.defined() || labels.dim() != 2 || labels.size(0) == 0 || labels.size(1) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("labels: expected [N, T] with N > 0 and T > 0, got ", Shape(labels)));
  }
  if (labels.is_complex() || !((labels == 0) | (labels == 1)).all().item<bool>()) {
    return absl::InvalidArgumentError("labels: every entry must be 0 or 1");
  }
  if (chunk_columns < 0) {
    return absl::InvalidArgumentError(absl::StrCat("chunk_columns: must be >= 0, got ", chunk_columns));
  }
  BestProbeTracker tracker;
  tracker.labels_ = labels.to(torch::kDouble).contiguous();
  tracker.chunk_columns_ = chunk_columns;
  const auto positives = tracker.labels_.sum(0).to(torch::kCPU).contiguous();
  const double n = static_cast<double>(labels.size(0));
  const int64_t tasks = labels.size(1);
  for (int64_t t = 0; t < tasks; ++t) {
    const double k = positives.data_ptr<double>()[t];
    if (k == 0 || k == n) {
      return absl::InvalidArgumentError(absl::StrCat("labels: task ", t, " has only one class (all ",
                                                     k == 0 ? 0 : 1, "); a probe needs both"));
    }
    const double p = k / n;
    tracker.prior_loss_.push_back(-(p * std::log(p) + (1 - p) * std::log1p(-p)));
    tracker.prior_logit_.push_back(std::log(p) - std::log1p(-p));
  }
  tracker.best_.assign(tasks, ProbeFit{});
  return tracker;
}

absl::Status BestProbeTracker::Offer(const torch::Tensor& columns, int64_t first_column) {
  torch::NoGradGuard no_grad;
  const int64_t n = labels_.size(0);
  if (!columns.defined() || columns.dim() != 2 || columns.size(0) != n) {
    return absl::InvalidArgumentError(absl::StrCat("columns: expected [N, c] with N = ", n,
                                                   " (the labels' rows), got ", Shape(columns)));
  }
  if (!columns.is_floating_point()) {
    return absl::InvalidArgumentError(
        absl::StrCat("columns: expected a floating-point tensor, got ", c10::toString(columns.scalar_type())));
  }
  if (first_column < 0) {
    return absl::InvalidArgumentError(absl::StrCat("first_column: must be >= 0, got ", first_column));
  }
  const int64_t c = columns.size(1);
  const int64_t chunk = chunk_columns_ > 0 ? chunk_columns_ : std::max<int64_t>(1, kChunkElements / n);
  const auto y_all = labels_.to(columns.device());
  for (int64_t begin = 0; begin < c; begin += chunk) {
    const int64_t len = std::min(chunk, c - begin);
    auto z = columns.narrow(1, begin, len).to(torch::kDouble);
    const auto finite = torch::isfinite(z).all(0).to(torch::kCPU).contiguous();
    z = torch::nan_to_num(z, 0.0, 0.0, 0.0);
    // Standardise so that Newton starts well conditioned and the ridge is scale-free. A constant
    // column (exactly, not up to rounding) carries no information: it keeps w = 0.
    const auto constant = (z.amax(0) == z.amin(0));
    const auto mu = z.mean(0);
    auto sd = (z - mu).pow(2).mean(0).sqrt();
    sd = torch::where(constant, torch::ones_like(sd), sd);
    const auto zs = ((z - mu) / sd).masked_fill(constant, 0.0);
    const auto mu_cpu = mu.to(torch::kCPU).contiguous();
    const auto sd_cpu = sd.to(torch::kCPU).contiguous();
    for (int64_t task = 0; task < num_tasks(); ++task) {
      const auto y = y_all.select(1, task).unsqueeze(1);
      ColumnFits fit = FitColumns(zs, y, prior_logit_[task]);
      const auto w = fit.weight.to(torch::kCPU).contiguous();
      const auto b = fit.bias.to(torch::kCPU).contiguous();
      const auto loss = fit.loss.to(torch::kCPU).contiguous();
      ProbeFit& best = best_[task];
      for (int64_t j = 0; j < len; ++j) {
        const double l = loss.data_ptr<double>()[j];
        if (!finite.data_ptr<bool>()[j] || !std::isfinite(l)) continue;
        const int64_t column = first_column + begin + j;
        if (best.column >= 0 && !(l < best.loss || (l == best.loss && column < best.column))) continue;
        const double ws = w.data_ptr<double>()[j];
        const double s = sd_cpu.data_ptr<double>()[j];
        best.column = column;
        best.loss = l;
        best.weight = ws / s;
        best.bias = b.data_ptr<double>()[j] - ws * mu_cpu.data_ptr<double>()[j] / s;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace saegrid
