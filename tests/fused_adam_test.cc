// kernels::FusedAdamStep against the same update written as separate LibTorch tensor ops
// (projection, clipping scale, Adam with PyTorch's formulas, row renormalisation), over several
// steps. Tolerance: norm-wise relative error <= 1e-6 in float32.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "engine/optimizer.h"
#include "kernels/fused_adam.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using FusedAdam = testing::KernelPathTest;

using testing::RelativeError;

constexpr double kTolerance = 1e-6;

struct State {
  torch::Tensor param, exp_avg, exp_avg_sq;
};

torch::Tensor Project(const torch::Tensor& w, const torch::Tensor& g) {
  return g - (g * w).sum(1, true) / w.pow(2).sum(1, true).clamp_min(1e-24) * w;
}

// The reference: one step as separate tensor ops, in float64 for an independent result.
void ReferenceStep(State& s, const torch::Tensor& grad, const kernels::AdamHyperparameters& h,
                   bool unit_norm_rows) {
  auto g = grad.to(torch::kDouble);
  auto w = s.param.to(torch::kDouble);
  if (unit_norm_rows) g = Project(w, g);
  g = g * h.grad_scale;
  auto m = s.exp_avg.to(torch::kDouble) * h.beta1 + g * (1 - h.beta1);
  auto v = s.exp_avg_sq.to(torch::kDouble) * h.beta2 + g * g * (1 - h.beta2);
  const double bias1 = 1 - std::pow(h.beta1, h.step);
  const double bias2 = 1 - std::pow(h.beta2, h.step);
  w = w - h.lr / bias1 * m / (v.sqrt() / std::sqrt(bias2) + h.eps);
  if (unit_norm_rows) w = w / w.norm(2, 1, true).clamp_min(1e-12);
  s = {w.to(torch::kFloat), m.to(torch::kFloat), v.to(torch::kFloat)};
}

State Fresh(const std::vector<int64_t>& shape, bool unit_rows) {
  auto p = torch::randn(shape);
  if (unit_rows) p = p / p.norm(2, 1, true);
  return {p, torch::zeros(shape), torch::zeros(shape)};
}

void ExpectMatchesReference(const std::vector<int64_t>& shape, bool unit_norm_rows, double scale) {
  torch::manual_seed(9);
  State fused = Fresh(shape, unit_norm_rows);
  State reference{fused.param.clone(), fused.exp_avg.clone(), fused.exp_avg_sq.clone()};
  kernels::AdamHyperparameters h;
  h.lr = 3e-3;
  h.eps = 6.25e-10;
  h.grad_scale = scale;
  for (int64_t step = 1; step <= 4; ++step) {
    h.step = step;
    const auto grad = torch::randn(shape) * 0.1;
    const auto expected_sq = unit_norm_rows
                                 ? Project(fused.param.to(torch::kDouble), grad.to(torch::kDouble)).pow(2).sum().item<double>()
                                 : grad.to(torch::kDouble).pow(2).sum().item<double>();
    EXPECT_NEAR(kernels::FusedGradientSquaredNorm(fused.param, grad, unit_norm_rows).item<double>(), expected_sq,
                1e-5 * expected_sq);
    const double used_sq =
        kernels::FusedAdamStep(fused.param, grad, fused.exp_avg, fused.exp_avg_sq, h, unit_norm_rows).item<double>();
    EXPECT_NEAR(used_sq, expected_sq, 1e-5 * expected_sq);
    ReferenceStep(reference, grad, h, unit_norm_rows);
    SCOPED_TRACE("step " + std::to_string(step));
    EXPECT_LT(RelativeError(fused.param, reference.param), kTolerance);
    EXPECT_LT(RelativeError(fused.exp_avg, reference.exp_avg), kTolerance);
    EXPECT_LT(RelativeError(fused.exp_avg_sq, reference.exp_avg_sq), kTolerance);
  }
  if (unit_norm_rows) {
    EXPECT_LT((fused.param.norm(2, 1) - 1).abs().max().item<double>(), 1e-6);
  }
}

TEST_P(FusedAdam, DecoderRowsProjectUpdateAndRenormalise) { ExpectMatchesReference({300, 48}, true, 1.0); }

TEST_P(FusedAdam, ClippingScaleMultipliesTheProjectedGradient) {
  ExpectMatchesReference({300, 48}, true, 0.37);
}

TEST_P(FusedAdam, PlainMatricesAndVectorsWithATail) {
  ExpectMatchesReference({300, 48}, false, 1.0);
  ExpectMatchesReference({10000}, false, 0.5);  // 4096-element rows plus a 1808-element tail
}

TEST_P(FusedAdam, TrainerStepEqualsTheUnfusedReferenceOps) {
  // Adam::FusedStep against Adam::Step with the SAE's separate projection and renormalisation,
  // the code path the trainer used before the fused pass.
  torch::manual_seed(12);
  auto make = [] {
    std::vector<torch::Tensor> p = {torch::randn({64, 16}), torch::randn({64}),
                                    torch::randn({64, 16}), torch::randn({16})};
    p[2] = p[2] / p[2].norm(2, 1, true);
    return p;
  };
  auto fused_params = make();
  std::vector<torch::Tensor> reference_params;
  for (const auto& p : fused_params) reference_params.push_back(p.clone());
  OptimizerConfig config;
  Adam fused(fused_params, config), reference(reference_params, config);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < fused_params.size(); ++i) {
      const auto g = torch::randn_like(fused_params[i]);
      fused_params[i].mutable_grad() = g.clone();
      reference_params[i].mutable_grad() = g.clone();
    }
    fused.FusedStep(1e-2, 1.0, {false, false, true, false});
    {
      torch::NoGradGuard no_grad;
      auto& w = reference_params[2];
      auto g = w.mutable_grad();
      g.sub_((g * w).sum(1, true) / w.pow(2).sum(1, true) * w);
      reference.Step(1e-2);
      w.div_(w.norm(2, 1, true));
    }
  }
  for (size_t i = 0; i < fused_params.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_LT(RelativeError(fused_params[i], reference_params[i]), kTolerance);
  }
}

TEST_P(FusedAdam, RejectsMismatchedOperands) {
  auto p = torch::zeros({4, 3});
  auto m = torch::zeros({4, 3});
  auto v = torch::zeros({4, 3});
  kernels::AdamHyperparameters h;
  EXPECT_THROW(kernels::FusedAdamStep(p, torch::zeros({4, 2}), m, v, h, true), c10::Error);
  auto m_double = torch::zeros({4, 3}, torch::kDouble);
  EXPECT_THROW(kernels::FusedAdamStep(p, torch::zeros({4, 3}), m_double, v, h, true), c10::Error);
  auto flat = torch::zeros({12});
  auto fm = torch::zeros({12}), fv = torch::zeros({12});
  EXPECT_THROW(kernels::FusedAdamStep(flat, torch::zeros({12}), fm, fv, h, true), c10::Error);
  h.step = 0;
  EXPECT_THROW(kernels::FusedAdamStep(p, torch::zeros({4, 3}), m, v, h, false), c10::Error);
}

SAEGRID_INSTANTIATE_ON_KERNEL_PATHS(FusedAdam);

}  // namespace
}  // namespace saegrid
