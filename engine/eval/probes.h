// 1-d probes (Gao et al. 2024, section 4.2): for each binary task, the best logistic probe
// sigmoid(w * z + b) on a single column z of a matrix, over all the columns offered. On an SAE the
// columns are the latents' pre-activations; the baseline is the same search over the raw input
// channels. Quality is the probe's mean binary cross-entropy in nats, lower is better; the
// constant probe (bias only) scores the label entropy, which every column beats or ties.
//
// Each (column, task) pair is fitted by Newton-Raphson on its 2x2 Hessian, all columns of a block
// at once. The column is standardised first (so the fit and the ridge are scale-free; w and b are
// reported in the column's own units), a ridge of kProbeRidge * w_std^2 / 2 on the standardised
// weight keeps separable columns finite, every step is halved until the objective does not rise,
// and the fit stops after kProbeMaxIterations or when the largest standardised step is below
// kProbeStepTolerance. The reported loss is the cross-entropy alone, without the ridge term.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace saegrid {

inline constexpr double kProbeRidge = 1e-6;
inline constexpr int kProbeMaxIterations = 25;
inline constexpr double kProbeStepTolerance = 1e-6;

struct ProbeFit {
  int64_t column = -1;  // -1 until a column has been offered
  double loss = 0;      // mean binary cross-entropy, nats
  double weight = 0;    // p = sigmoid(weight * z + bias), z in the column's units
  double bias = 0;
};

// Per task, the best 1-d probe over the columns offered so far. Columns may be offered in blocks
// (N x num_latents need not fit in memory); the result does not depend on the blocking. Ties go
// to the lower column number.
class BestProbeTracker {
 public:
  // labels [N, T], N > 0, T > 0: T binary tasks, any dtype with values 0 or 1; each task needs
  // both classes (a constant task has nothing to probe). Errors name "labels".
  static absl::StatusOr<BestProbeTracker> Create(const torch::Tensor& labels);
  // As above, fitting at most `chunk_columns` columns at a time (0: chosen from N so that the
  // working tensors stay a few x 2^21 doubles). Only the memory and the speed depend on it.
  static absl::StatusOr<BestProbeTracker> Create(const torch::Tensor& labels, int64_t chunk_columns);

  // columns [N, c] floating point (any device): c candidate columns, numbered first_column ..
  // first_column + c - 1 (first_column >= 0). Fits every (column, task) pair, in float64. A
  // column with a non-finite entry is skipped. Errors name "columns" or "first_column".
  absl::Status Offer(const torch::Tensor& columns, int64_t first_column);

  const std::vector<ProbeFit>& best() const { return best_; }  // one per task
  // The loss of the constant probe: each task's label entropy, in nats.
  std::vector<double> prior_loss() const { return prior_loss_; }
  int64_t num_tasks() const { return static_cast<int64_t>(best_.size()); }

 private:
  BestProbeTracker() = default;

  torch::Tensor labels_;  // [N, T] float64
  int64_t chunk_columns_ = 0;
  std::vector<double> prior_loss_;
  std::vector<double> prior_logit_;
  std::vector<ProbeFit> best_;
};

}  // namespace saegrid
