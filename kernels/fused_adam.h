// The optimizer step as one pass over each parameter: Adam (PyTorch semantics, no weight decay)
// fused with the TopK SAE's decoder constraint. For a decoder ([n, d], unit-norm rows) each row's
// gradient loses its component along the row, Adam updates the row, and the row is rescaled to
// unit norm while it is still in cache: parameter, gradient and both moments are read once and
// written once, instead of the five separate tensor passes of project / scale / Adam / renorm.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace saegrid::kernels {

struct AdamHyperparameters {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  int64_t step = 1;         // the step being taken, from 1 (bias correction)
  double grad_scale = 1.0;  // multiplies the (projected) gradient: global-norm clipping
};

// Updates `param`, `exp_avg` and `exp_avg_sq` in place from `grad` (all float32, contiguous, of
// one shape, on one device). `unit_norm_rows` (2-D only): project each gradient row orthogonally
// to its weight row first and renormalise the row after. The gradient is not modified. Returns
// the squared L2 norm of the gradient as used, before grad_scale (the projected one for rows), as
// a 0-d float64 tensor on the parameter's device, so that a GPU step need not wait for it.
torch::Tensor FusedAdamStep(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& exp_avg,
                     torch::Tensor& exp_avg_sq, const AdamHyperparameters& hyper,
                     bool unit_norm_rows);

// The squared L2 norm FusedAdamStep would report, without updating anything: the clipping
// scale must be known before the update.
torch::Tensor FusedGradientSquaredNorm(const torch::Tensor& param, const torch::Tensor& grad,
                                bool unit_norm_rows);

}  // namespace saegrid::kernels
