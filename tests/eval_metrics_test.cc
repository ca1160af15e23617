// The evaluation metrics of engine/eval/ against answers known by construction or by hand:
// 1-d probes (a separator, a constant column, an autograd fit of the same objective, the
// informative column among noise, blocking), activation shrinkage (orthonormal decoders, a
// hand-solved clipped case, optimality conditions on random data, monotone error), and the
// decoder-row comparison of a smaller and a larger SAE (copies, known angles, scale, chunking).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "engine/eval/decoder_comparison.h"
#include "engine/eval/probes.h"
#include "engine/eval/shrinkage.h"

namespace saegrid {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

torch::Tensor Column(std::vector<double> v) { return torch::tensor(v, torch::kFloat).unsqueeze(1); }

// ---------------------------------------------------------------------------------------------
// Probes

TEST(Probes, ConstantAndSeparatingColumnsHaveHandComputedLosses) {
  const auto labels = torch::tensor({1, 1, 1, 0}, torch::kLong).unsqueeze(1);
  auto tracker = BestProbeTracker::Create(labels);
  ASSERT_TRUE(tracker.ok()) << tracker.status();
  const double entropy = -(0.75 * std::log(0.75) + 0.25 * std::log(0.25));
  ASSERT_EQ(tracker->prior_loss().size(), 1u);
  EXPECT_NEAR(tracker->prior_loss()[0], entropy, 1e-15);
  // A constant column carries nothing: the constant probe, whose loss is the label entropy.
  ASSERT_TRUE(tracker->Offer(Column({5, 5, 5, 5}), 0).ok());
  EXPECT_EQ(tracker->best()[0].column, 0);
  EXPECT_NEAR(tracker->best()[0].loss, entropy, 1e-12);
  EXPECT_EQ(tracker->best()[0].weight, 0);
  EXPECT_NEAR(tracker->best()[0].bias, std::log(3.0), 1e-9);
  // A perfect separator: only the ridge (and the iteration cap) keeps the loss above 0.
  ASSERT_TRUE(tracker->Offer(Column({2, 3, 4, -1}), 1).ok());
  const ProbeFit& fit = tracker->best()[0];
  EXPECT_EQ(fit.column, 1);
  EXPECT_GT(fit.loss, 0);     // about 1.6e-5 at the optimum with the ridge,
  EXPECT_LT(fit.loss, 1e-4);  // which it reaches well within the iteration cap
  EXPECT_GT(fit.weight, 0);
  // The decision boundary -b / w falls between the classes, in the column's own units.
  EXPECT_GT(-fit.bias / fit.weight, -1);
  EXPECT_LT(-fit.bias / fit.weight, 2);
}

TEST(Probes, LabelsOfAnInputChannelGiveANearPerfectBaseline) {
  torch::manual_seed(1);
  const int64_t n = 500;
  const auto labels = torch::randint(0, 2, {n, 1}, torch::kLong);
  // Channel 2 is the label itself (as an input channel of 0/1 values); the others are noise.
  auto channels = torch::randn({n, 6});
  channels.select(1, 2).copy_(labels.select(1, 0).to(torch::kFloat));
  auto tracker = BestProbeTracker::Create(labels);
  ASSERT_TRUE(tracker.ok()) << tracker.status();
  ASSERT_TRUE(tracker->Offer(channels, 0).ok());
  EXPECT_EQ(tracker->best()[0].column, 2);
  EXPECT_LT(tracker->best()[0].loss, 1e-4);
  EXPECT_LT(tracker->best()[0].loss, tracker->prior_loss()[0]);
}

// The same objective (cross-entropy plus the ridge on the standardised weight) minimised
// independently: LBFGS with a strong-Wolfe line search on autograd gradients, in float64.
struct ReferenceFit {
  double weight, bias, loss;
};

ReferenceFit AutogradFit(const torch::Tensor& z, const torch::Tensor& y) {
  const auto zd = z.to(torch::kDouble);
  const auto yd = y.to(torch::kDouble);
  const double sd = (zd - zd.mean()).pow(2).mean().sqrt().item<double>();
  auto w = torch::zeros({1}, torch::TensorOptions().dtype(torch::kDouble).requires_grad(true));
  auto b = torch::zeros({1}, torch::TensorOptions().dtype(torch::kDouble).requires_grad(true));
  torch::optim::LBFGS opt({w, b}, torch::optim::LBFGSOptions(1)
                                      .max_iter(1000)
                                      .tolerance_grad(1e-13)
                                      .tolerance_change(1e-16)
                                      .history_size(20)
                                      .line_search_fn("strong_wolfe"));
  auto closure = [&] {
    opt.zero_grad();
    auto loss = torch::binary_cross_entropy_with_logits(zd * w + b, yd) +
                0.5 * kProbeRidge * (w * sd).pow(2).sum();
    loss.backward();
    return loss;
  };
  for (int i = 0; i < 5; ++i) opt.step(closure);
  torch::NoGradGuard no_grad;
  const double loss = torch::binary_cross_entropy_with_logits(zd * w + b, yd).item<double>();
  return {w.item<double>(), b.item<double>(), loss};
}

TEST(Probes, NewtonMatchesAnAutogradFitOnNonSeparableData) {
  torch::manual_seed(2);
  const int64_t n = 2000;
  const auto z = 1.5 * torch::randn({n, 1}) + 0.7;
  // Three tasks of increasing steepness; the last needs a large weight.
  const std::vector<std::pair<double, double>> truth = {{0.8, -0.3}, {-2.0, 1.0}, {6.0, -4.0}};
  std::vector<torch::Tensor> cols;
  for (const auto& [w, b] : truth) cols.push_back(torch::bernoulli(torch::sigmoid(w * z + b)));
  const auto labels = torch::cat(cols, 1);
  auto tracker = BestProbeTracker::Create(labels);
  ASSERT_TRUE(tracker.ok()) << tracker.status();
  ASSERT_TRUE(tracker->Offer(z, 0).ok());
  for (int64_t t = 0; t < 3; ++t) {
    SCOPED_TRACE(t);
    const ReferenceFit ref = AutogradFit(z, labels.select(1, t).unsqueeze(1));
    const ProbeFit& fit = tracker->best()[t];
    EXPECT_EQ(fit.column, 0);
    EXPECT_NEAR(fit.loss, ref.loss, 1e-4);
    EXPECT_NEAR(fit.weight, ref.weight, 1e-3);
    EXPECT_NEAR(fit.bias, ref.bias, 1e-3);
    EXPECT_LT(fit.loss, tracker->prior_loss()[t]);
  }
}

TEST(Probes, TheInformativeColumnWinsAndBlockingDoesNotMatter) {
  torch::manual_seed(3);
  const int64_t n = 1000, c = 12;
  const auto columns = torch::randn({n, c});
  // Task 0 follows column 7, task 1 column 3 (with a negative slope and an offset and scale).
  columns.select(1, 3).mul_(40).add_(-15);
  const auto y0 = torch::bernoulli(torch::sigmoid(2.5 * columns.select(1, 7)));
  const auto y1 = torch::bernoulli(torch::sigmoid(-0.1 * (columns.select(1, 3) + 15)));
  const auto labels = torch::stack({y0, y1}, 1).to(torch::kBool);

  auto whole = BestProbeTracker::Create(labels);
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_TRUE(whole->Offer(columns, 0).ok());
  EXPECT_EQ(whole->best()[0].column, 7);
  EXPECT_EQ(whole->best()[1].column, 3);
  EXPECT_LT(whole->best()[1].weight, 0);
  for (int t = 0; t < 2; ++t) EXPECT_LT(whole->best()[t].loss, whole->prior_loss()[t] - 0.1);

  // Two blocks, offered last first; and one block fitted two columns at a time.
  auto blocks = BestProbeTracker::Create(labels);
  ASSERT_TRUE(blocks.ok());
  ASSERT_TRUE(blocks->Offer(columns.narrow(1, 5, 7), 5).ok());
  ASSERT_TRUE(blocks->Offer(columns.narrow(1, 0, 5), 0).ok());
  auto chunked = BestProbeTracker::Create(labels, 2);
  ASSERT_TRUE(chunked.ok());
  ASSERT_TRUE(chunked->Offer(columns, 0).ok());
  for (const BestProbeTracker* other : {&*blocks, &*chunked}) {
    for (int t = 0; t < 2; ++t) {
      EXPECT_EQ(other->best()[t].column, whole->best()[t].column);
      EXPECT_NEAR(other->best()[t].loss, whole->best()[t].loss, 1e-12);
      EXPECT_NEAR(other->best()[t].weight, whole->best()[t].weight, 1e-9);
      EXPECT_NEAR(other->best()[t].bias, whole->best()[t].bias, 1e-9);
    }
  }
}

TEST(Probes, BadInputsAreErrorsNamingTheArgument) {
  auto not_binary = BestProbeTracker::Create(torch::tensor({0, 1, 2}).unsqueeze(1));
  ASSERT_FALSE(not_binary.ok());
  EXPECT_THAT(not_binary.status().message(), HasSubstr("labels"));
  auto one_class = BestProbeTracker::Create(torch::tensor({1, 1, 1}).unsqueeze(1));
  ASSERT_FALSE(one_class.ok());
  EXPECT_THAT(one_class.status().message(), AllOf(HasSubstr("labels"), HasSubstr("one class")));
  auto flat = BestProbeTracker::Create(torch::tensor({0, 1}));
  ASSERT_FALSE(flat.ok());
  EXPECT_THAT(flat.status().message(), HasSubstr("labels"));

  auto tracker = BestProbeTracker::Create(torch::tensor({0, 1, 1}).unsqueeze(1));
  ASSERT_TRUE(tracker.ok());
  const absl::Status rows = tracker->Offer(torch::randn({4, 2}), 0);
  ASSERT_FALSE(rows.ok());
  EXPECT_THAT(rows.message(), AllOf(HasSubstr("columns"), HasSubstr("[4, 2]")));
  EXPECT_THAT(tracker->Offer(torch::ones({3, 2}, torch::kLong), 0).message(), HasSubstr("columns"));
  EXPECT_THAT(tracker->Offer(torch::randn({3, 2}), -1).message(), HasSubstr("first_column"));
  EXPECT_EQ(tracker->best()[0].column, -1);  // nothing was offered
}

// ---------------------------------------------------------------------------------------------
// Activation shrinkage

// `rows` orthonormal rows of width d (rows <= d).
torch::Tensor OrthonormalRows(int64_t rows, int64_t d) {
  return std::get<0>(torch::linalg_qr(torch::randn({d, rows}, torch::kDouble), "reduced")).t().contiguous().to(torch::kFloat);
}

// k distinct latents per token out of n.
torch::Tensor DistinctIndices(int64_t tokens, int64_t k, int64_t n) {
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i < tokens; ++i) rows.push_back(torch::randperm(n, torch::kLong).narrow(0, 0, k));
  return torch::stack(rows);
}

// b_pre + sum_j a_j w_dec[indices_j], per token.
torch::Tensor Decode(const torch::Tensor& indices, const torch::Tensor& acts, const torch::Tensor& w_dec,
                     const torch::Tensor& b_pre) {
  const auto rows = w_dec.index_select(0, indices.reshape(-1)).view({indices.size(0), indices.size(1), -1});
  return b_pre + torch::bmm(acts.unsqueeze(1), rows).squeeze(1);
}

TEST(Shrinkage, OrthonormalDecoderGivesTheClippedProjections) {
  torch::manual_seed(4);
  const int64_t n = 12, d = 16, k = 4, tokens = 50;
  const auto w_dec = OrthonormalRows(n, d);
  const auto b_pre = torch::randn({d});
  const auto indices = DistinctIndices(tokens, k, n);
  const auto x = b_pre + torch::randn({tokens, d});
  const auto acts = torch::rand({tokens, k}) + 0.1;  // every slot active
  auto r = RefineActivations(x, indices, acts, w_dec, b_pre);
  ASSERT_TRUE(r.ok()) << r.status();
  // With orthonormal rows the problem separates: a_j = max(<x - b_pre, d_j>, 0).
  const auto rows = w_dec.index_select(0, indices.reshape(-1)).view({tokens, k, d});
  const auto expected = torch::bmm(rows, (x - b_pre).unsqueeze(2)).squeeze(2).clamp_min(0);
  ASSERT_GT((expected == 0).sum().item<int64_t>(), 0);  // the clipping takes part
  EXPECT_LT((r->refined - expected).abs().max().item<double>(), 1e-5);
  EXPECT_EQ(r->tokens, tokens);
  EXPECT_EQ(r->iterations, 200);
  EXPECT_LE(r->fvu_after, r->fvu_before);

  // A code shrunk by half: the refined code doubles it back, and the error vanishes.
  const auto truth = torch::rand({tokens, k}) + 0.5;
  const auto exact = Decode(indices, truth, w_dec, b_pre);
  auto shrunk = RefineActivations(exact, indices, 0.5 * truth, w_dec, b_pre);
  ASSERT_TRUE(shrunk.ok()) << shrunk.status();
  EXPECT_LT((shrunk->refined - truth).abs().max().item<double>(), 1e-5);
  EXPECT_NEAR(shrunk->mean_ratio, 2.0, 1e-5);
  EXPECT_GT(shrunk->fvu_before, 0.05);
  EXPECT_LT(shrunk->fvu_after, 1e-10);
}

TEST(Shrinkage, AnOptimalCodeIsLeftAlone) {
  torch::manual_seed(5);
  const int64_t n = 12, d = 16, k = 4, tokens = 40;
  const auto basis = OrthonormalRows(d, d);
  const auto w_dec = basis.narrow(0, 0, n);
  const auto b_pre = torch::randn({d});
  const auto indices = DistinctIndices(tokens, k, n);
  const auto code = torch::rand({tokens, k}) + 0.2;
  // Noise outside the decoder's span: the code stays optimal but the error is not zero.
  const auto noise = torch::randn({tokens, d - n}).mm(basis.narrow(0, n, d - n));
  const auto x = Decode(indices, code, w_dec, b_pre) + noise;
  auto r = RefineActivations(x, indices, code, w_dec, b_pre);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->mean_ratio, 1.0, 1e-6);
  EXPECT_LT((r->refined - code).abs().max().item<double>(), 1e-5);
  EXPECT_GT(r->fvu_before, 0.01);
  EXPECT_NEAR(r->fvu_after, r->fvu_before, 1e-9 * r->fvu_before);

  // No iterations: the code is returned as it is.
  auto none = RefineActivations(x, indices, code, w_dec, b_pre, 0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(torch::equal(none->refined, code));
  EXPECT_EQ(none->mean_ratio, 1.0);
  EXPECT_EQ(none->fvu_after, none->fvu_before);
}

TEST(Shrinkage, HandWorkedTwoRowCaseClipsTheNegativeCoefficient) {
  // d1 = e1, d2 = (e1 + e2) / sqrt 2. Token 0: x - b_pre = (2, -1) = 3 d1 - sqrt2 d2, so the
  // unconstrained optimum has a2 < 0; the constrained one is a2 = 0, a1 = <x - b_pre, d1> = 2
  // (the gradient in a2 there, -<r, d2> with r = (0, -1), is 1/sqrt2 > 0: a2 = 0 is optimal).
  // Token 1: x - b_pre = 0.5 d1 + 2 d2 but only d2 is active (the d1 slot has value 0), so
  // a2 = <x - b_pre, d2> = 2 + 0.5 / sqrt2 and the inactive slot stays 0.
  const double s = 1 / std::sqrt(2.0);
  const auto w_dec = torch::tensor({1.0, 0.0, s, s}, torch::kFloat).view({2, 2});
  const auto b_pre = torch::tensor({0.5, -0.25}, torch::kFloat);
  const auto x = torch::stack({b_pre + torch::tensor({2.0f, -1.0f}),
                               b_pre + 0.5 * w_dec[0] + 2 * w_dec[1]});
  const auto indices = torch::tensor({0, 1, 1, 0}, torch::kLong).view({2, 2});
  const auto acts = torch::tensor({1.0f, 1.0f, 0.3f, 0.0f}).view({2, 2});
  auto r = RefineActivations(x, indices, acts, w_dec, b_pre);
  ASSERT_TRUE(r.ok()) << r.status();
  const auto refined = r->refined.to(torch::kDouble);
  EXPECT_NEAR(refined[0][0].item<double>(), 2.0, 1e-5);
  EXPECT_EQ(refined[0][1].item<double>(), 0.0);
  EXPECT_NEAR(refined[1][0].item<double>(), 2 + 0.5 * s, 1e-5);
  EXPECT_EQ(refined[1][1].item<double>(), 0.0);
  // Ratios: token 0 (2 + 0) / (1 + 1) = 1, token 1 (2 + 0.5 s) / 0.3.
  EXPECT_NEAR(r->mean_ratio, (1.0 + (2 + 0.5 * s) / 0.3) / 2, 1e-5);
}

TEST(Shrinkage, RefinedCodesSatisfyTheOptimalityConditionsAndNeverRaiseTheError) {
  torch::manual_seed(6);
  const int64_t n = 64, d = 32, k = 8, tokens = 300;
  const auto w_dec = torch::randn({n, d}) * (0.5 + torch::rand({n, 1}));
  const auto b_pre = 0.1 * torch::randn({d});
  const auto indices = DistinctIndices(tokens, k, n);
  auto acts = torch::rand({tokens, k});
  acts.masked_fill_(torch::rand({tokens, k}) < 0.25, 0);  // some slots inactive
  const auto x = Decode(indices, torch::rand({tokens, k}), w_dec, b_pre) + 0.3 * torch::randn({tokens, d});
  auto r = RefineActivations(x, indices, acts, w_dec, b_pre, 500);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LE(r->fvu_after, r->fvu_before);
  EXPECT_LT(r->fvu_after, 0.9 * r->fvu_before);  // random codes are far from optimal
  EXPECT_GE(r->refined.min().item<double>(), 0);
  EXPECT_TRUE(torch::equal(r->refined.masked_select(acts == 0), torch::zeros({(acts == 0).sum().item<int64_t>()})));
  // KKT, in float64: the gradient of ||x - x_hat||^2 / 2 is 0 on a positive value and >= 0 on a
  // value clipped to 0, over the active slots.
  const auto active = (acts > 0).to(torch::kDouble);
  const auto rows = w_dec.to(torch::kDouble).index_select(0, indices.reshape(-1)).view({tokens, k, d});
  const auto residual = (x - b_pre).to(torch::kDouble) -
                        torch::bmm(r->refined.to(torch::kDouble).unsqueeze(1), rows).squeeze(1);
  const auto grad = -torch::bmm(rows, residual.unsqueeze(2)).squeeze(2) * active;
  const auto positive = r->refined > 0;
  EXPECT_LT(grad.masked_select(positive).abs().max().item<double>(), 1e-3);
  EXPECT_GT(grad.masked_select(~positive).min().item<double>(), -1e-3);
  // And a token with no active slot keeps a zero code and is left out of the ratio.
  auto with_empty = acts.clone();
  with_empty[0].zero_();
  auto e = RefineActivations(x, indices, with_empty, w_dec, b_pre, 500);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->refined[0].abs().sum().item<double>(), 0);
  EXPECT_TRUE(std::isfinite(e->mean_ratio));
}

TEST(Shrinkage, BadShapesAreErrorsNamingTheArgument) {
  const auto x = torch::randn({5, 3});
  const auto indices = torch::zeros({5, 2}, torch::kLong);
  const auto acts = torch::ones({5, 2});
  const auto w_dec = torch::randn({4, 3});
  const auto b_pre = torch::zeros({3});
  ASSERT_TRUE(RefineActivations(x, indices, acts, w_dec, b_pre).ok());
  auto message = [](const absl::StatusOr<ShrinkageResult>& r) {
    return r.ok() ? std::string("ok") : std::string(r.status().message());
  };
  EXPECT_THAT(message(RefineActivations(torch::randn({5}), indices, acts, w_dec, b_pre)), HasSubstr("x:"));
  EXPECT_THAT(message(RefineActivations(x, indices, acts, torch::randn({4, 7}), b_pre)),
              AllOf(HasSubstr("w_dec"), HasSubstr("[4, 7]"), HasSubstr("[5, 3]")));
  EXPECT_THAT(message(RefineActivations(x, indices, acts, w_dec, torch::zeros({4}))),
              AllOf(HasSubstr("b_pre"), HasSubstr("[4]")));
  EXPECT_THAT(message(RefineActivations(x, torch::zeros({6, 2}, torch::kLong), acts, w_dec, b_pre)),
              AllOf(HasSubstr("indices"), HasSubstr("[6, 2]")));
  EXPECT_THAT(message(RefineActivations(x, indices.to(torch::kFloat), acts, w_dec, b_pre)), HasSubstr("indices"));
  EXPECT_THAT(message(RefineActivations(x, indices, torch::ones({5, 3}), w_dec, b_pre)),
              AllOf(HasSubstr("acts"), HasSubstr("[5, 3]")));
  EXPECT_THAT(message(RefineActivations(x, indices, -acts, w_dec, b_pre)), HasSubstr("acts"));
  EXPECT_THAT(message(RefineActivations(x, indices + 4, acts, w_dec, b_pre)), HasSubstr("indices"));
  EXPECT_THAT(message(RefineActivations(x, indices, acts, w_dec, b_pre, -1)), HasSubstr("iterations"));
}

// ---------------------------------------------------------------------------------------------
// Decoder comparison

TEST(DecoderComparison, CopiedRowsMatchAndOrthogonalNewRowsAreNovel) {
  torch::manual_seed(7);
  const int64_t d = 32, n_s = 10, n_new = 6, n_l = n_s + n_new;
  // The smaller SAE lives in the first 16 dimensions, the new rows in the last 16.
  auto smaller = torch::zeros({n_s, d});
  smaller.narrow(1, 0, 16).copy_(torch::randn({n_s, 16}));
  auto fresh = torch::zeros({n_new, d});
  fresh.narrow(1, 16, 16).copy_(torch::randn({n_new, 16}));
  // The larger SAE: rescaled copies and the new rows, shuffled.
  const auto copies = smaller * (0.5 + torch::rand({n_s, 1}) * 3);
  const auto order = torch::randperm(n_l, torch::kLong);
  const auto larger = torch::cat({copies, fresh}).index_select(0, order);
  auto c = CompareDecoders(smaller, larger);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->threshold, 0.7);
  EXPECT_DOUBLE_EQ(c->novel_fraction, static_cast<double>(n_new) / n_l);
  EXPECT_DOUBLE_EQ(c->reconstruction_fraction, static_cast<double>(n_s) / n_l);
  EXPECT_NEAR(c->mean_max_cosine, static_cast<double>(n_s) / n_l, 1e-6);
  ASSERT_EQ(c->max_cosine.dim(), 1);
  ASSERT_EQ(c->max_cosine.size(0), n_l);
  ASSERT_EQ(c->nearest.scalar_type(), torch::kLong);
  for (int64_t i = 0; i < n_l; ++i) {
    const int64_t source = order[i].item<int64_t>();
    if (source < n_s) {
      EXPECT_NEAR(c->max_cosine[i].item<double>(), 1.0, 1e-6);
      EXPECT_EQ(c->nearest[i].item<int64_t>(), source);
    } else {
      EXPECT_EQ(c->max_cosine[i].item<double>(), 0.0);
    }
  }
  ASSERT_EQ(c->histogram.size(), 20u);
  EXPECT_EQ(c->histogram[19], n_s);
  EXPECT_EQ(c->histogram[10], n_new);
}

TEST(DecoderComparison, RowsAtKnownAnglesSplitAtTheThreshold) {
  const double pi = std::acos(-1.0);
  const auto smaller = torch::tensor({1.0f, 0.0f}).view({1, 2});
  // At 0, 60, 90 and 180 degrees from the smaller SAE's row, and a zero row.
  const auto larger = torch::tensor({2.0, 0.0, 3 * std::cos(pi / 3), 3 * std::sin(pi / 3), 0.0, 0.5,
                                     -1.0, 0.0, 0.0, 0.0},
                                    torch::kFloat)
                          .view({5, 2});
  auto c = CompareDecoders(smaller, larger);
  ASSERT_TRUE(c.ok()) << c.status();
  const std::vector<double> expected = {1, 0.5, 0, -1, 0};
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(c->max_cosine[i].item<double>(), expected[i], 1e-6) << i;
  EXPECT_EQ(c->nearest[0].item<int64_t>(), 0);
  EXPECT_EQ(c->nearest[4].item<int64_t>(), -1);  // the zero row has no direction
  EXPECT_DOUBLE_EQ(c->reconstruction_fraction, 1.0 / 5);
  EXPECT_DOUBLE_EQ(c->novel_fraction, 4.0 / 5);
  EXPECT_NEAR(c->mean_max_cosine, 0.5 / 5, 1e-6);
  EXPECT_EQ(c->histogram[0], 1);   // -1
  EXPECT_EQ(c->histogram[10], 2);  // 0, twice
  EXPECT_EQ(c->histogram[19], 1);  // 1
  auto lower = CompareDecoders(smaller, larger, 0.4);
  ASSERT_TRUE(lower.ok());
  EXPECT_DOUBLE_EQ(lower->reconstruction_fraction, 2.0 / 5);
  EXPECT_DOUBLE_EQ(lower->novel_fraction, 3.0 / 5);
  auto all = CompareDecoders(smaller, larger, -1);
  ASSERT_TRUE(all.ok());
  EXPECT_DOUBLE_EQ(all->reconstruction_fraction, 1.0);
}

TEST(DecoderComparison, ScalingRowsChangesNothing) {
  torch::manual_seed(8);
  const auto smaller = torch::randn({50, 16});
  const auto larger = torch::randn({80, 16});
  auto plain = CompareDecoders(smaller, larger);
  auto scaled = CompareDecoders(smaller * torch::exp(2 * torch::randn({50, 1})),
                                larger * torch::exp(2 * torch::randn({80, 1})));
  ASSERT_TRUE(plain.ok());
  ASSERT_TRUE(scaled.ok());
  EXPECT_LT((plain->max_cosine - scaled->max_cosine).abs().max().item<double>(), 1e-6);
  EXPECT_TRUE(torch::equal(plain->nearest, scaled->nearest));
  EXPECT_DOUBLE_EQ(plain->novel_fraction, scaled->novel_fraction);
  EXPECT_NEAR(plain->mean_max_cosine, scaled->mean_max_cosine, 1e-6);
}

TEST(DecoderComparison, ChunkingGivesTheSameResultAsOneBlock) {
  torch::manual_seed(9);
  const auto smaller = torch::randn({40, 8});
  auto larger = torch::randn({103, 8});
  larger.narrow(0, 0, 40).copy_(smaller + 0.3 * torch::randn({40, 8}));  // some close matches
  auto one = CompareDecoders(smaller, larger, 0.7, 1000);
  auto tiny = CompareDecoders(smaller, larger, 0.7, 3);
  auto automatic = CompareDecoders(smaller, larger);
  ASSERT_TRUE(one.ok());
  ASSERT_TRUE(tiny.ok());
  ASSERT_TRUE(automatic.ok());
  EXPECT_GT(one->reconstruction_fraction, 0.2);
  EXPECT_GT(one->novel_fraction, 0.2);
  for (const DecoderComparison* other : {&*tiny, &*automatic}) {
    EXPECT_LT((other->max_cosine - one->max_cosine).abs().max().item<double>(), 1e-6);
    EXPECT_TRUE(torch::equal(other->nearest, one->nearest));
    EXPECT_EQ(other->novel_fraction, one->novel_fraction);
    EXPECT_EQ(other->histogram, one->histogram);
  }
}

TEST(DecoderComparison, BadInputsAreErrors) {
  auto width = CompareDecoders(torch::randn({3, 4}), torch::randn({5, 6}));
  ASSERT_FALSE(width.ok());
  EXPECT_THAT(width.status().message(), AllOf(HasSubstr("[3, 4]"), HasSubstr("[5, 6]")));
  for (double t : {1.5, -1.01, std::nan("")}) {
    auto bad = CompareDecoders(torch::randn({3, 4}), torch::randn({5, 4}), t);
    ASSERT_FALSE(bad.ok());
    EXPECT_THAT(bad.status().message(), HasSubstr("threshold"));
  }
  auto empty_small = CompareDecoders(torch::zeros({0, 4}), torch::randn({5, 4}));
  ASSERT_FALSE(empty_small.ok());
  EXPECT_THAT(empty_small.status().message(), HasSubstr("smaller_rows"));
  auto empty_large = CompareDecoders(torch::randn({3, 4}), torch::zeros({0, 4}));
  ASSERT_FALSE(empty_large.ok());
  EXPECT_THAT(empty_large.status().message(), HasSubstr("larger_rows"));
  EXPECT_FALSE(CompareDecoders(torch::ones({3, 4}, torch::kLong), torch::randn({5, 4})).ok());
}

}  // namespace
}  // namespace saegrid
