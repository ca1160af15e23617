// The sparse training step (kernels + custom autograd) against dense autograd on the same
// parameters, data and selection, for every architecture (engine/activation/: each writes its
// dense reference independently of its sparse path). Tolerance: norm-wise relative error <= 1e-5 in fp32 for the
// loss and for every parameter gradient (the bar). Every case runs twice: on the CPU
// kernels and on the portable LibTorch-operator kernels (the GPU path's reference), forced on
// the CPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "engine/sae_model.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using testing::RelativeError;

constexpr double kTolerance = 1e-5;

using GradientEquivalence = testing::KernelPathTest;

ModelConfig Config(Architecture arch, bool layer_norm = false) {
  ModelConfig c;
  c.architecture = arch;
  c.k = 12;
  c.k_aux = 32;
  c.l1_coefficient = 0.05;
  // JumpReLU: thresholds near the pre-activations' scale and a wide kernel, so that many entries
  // fall inside the straight-through window and the threshold gradient is far from zero.
  c.jumprelu_initial_threshold = 0.5;
  c.jumprelu_bandwidth = 0.2;
  c.l0_coefficient = 0.01;
  c.matryoshka_prefixes = {24, 96};
  c.normalize_inputs = layer_norm ? InputNormalization::kLayerNorm : InputNormalization::kNone;
  return ResolveModelConfig(c, /*d_in=*/48);
}

// A model away from its symmetric init: random biases and encoder, so that every gradient term
// (including b_pre's two paths) is non-trivial.
SaeModel MakeModel(const ModelConfig& config, const torch::Tensor& data) {
  SaeModel model(ResolveModelConfig(config, config.d_in));
  model.Initialize(model.NormalizeInputs(data), /*seed=*/3);
  torch::NoGradGuard no_grad;
  torch::manual_seed(11);
  model.params().w_enc.add_(0.3 * torch::randn_like(model.params().w_enc));
  model.params().b_enc.copy_(0.2 * torch::randn_like(model.params().b_enc));
  model.params().b_pre.add_(0.1 * torch::randn_like(model.params().b_pre));
  if (model.params().log_threshold.defined()) {
    model.params().log_threshold.add_(0.3 * torch::randn_like(model.params().log_threshold));
  }
  return model;
}

struct Gradients {
  double loss;
  ForwardOutput out;
  std::vector<torch::Tensor> grads;
};

Gradients RunStep(SaeModel& model, const torch::Tensor& x, const torch::Tensor& dead,
              ComputePath path) {
  for (auto& p : model.params().All()) p.mutable_grad() = torch::Tensor();
  ForwardOutput out = model.TrainingForward(model.NormalizeInputs(x), dead, path);
  out.loss.backward();
  Gradients g{out.loss.item<double>(), out, {}};
  for (auto& p : model.params().All()) g.grads.push_back(p.grad().clone());
  return g;
}

void ExpectEquivalent(const ModelConfig& config, const torch::Tensor& dead) {
  torch::manual_seed(5);
  const auto x = torch::randn({96, config.d_in}) * 2 + 0.5;
  SaeModel model = MakeModel(config, x);
  const Gradients sparse = RunStep(model, x, dead, ComputePath::kSparse);
  const Gradients dense = RunStep(model, x, dead, ComputePath::kDenseReference);
  EXPECT_LT(std::abs(sparse.loss - dense.loss) / std::abs(dense.loss), kTolerance);
  for (size_t i = 0; i < sparse.grads.size(); ++i) {
    SCOPED_TRACE(SaeParameters::Names()[i]);
    ASSERT_GT(dense.grads[i].norm().item<double>(), 0) << "gradient is trivially zero";
    EXPECT_LT(RelativeError(sparse.grads[i], dense.grads[i]), kTolerance);
  }
  // The same activations at the same latents (the two paths order a token's slots differently).
  auto scattered = [&](const ForwardOutput& out) {
    return torch::zeros({x.size(0), config.num_latents}).scatter_add_(1, out.indices, out.acts);
  };
  EXPECT_LT(RelativeError(scattered(sparse.out), scattered(dense.out)), kTolerance);
  EXPECT_EQ(sparse.out.l0, dense.out.l0);
}

TEST_P(GradientEquivalence, TopK) {
  ExpectEquivalent(Config(Architecture::kTopK), torch::Tensor());
}

TEST_P(GradientEquivalence, TopKWithLayerNorm) {
  ExpectEquivalent(Config(Architecture::kTopK, /*layer_norm=*/true), torch::Tensor());
}

TEST_P(GradientEquivalence, TopKWithAuxK) {
  const auto config = Config(Architecture::kTopK);
  torch::manual_seed(9);
  const auto dead = torch::rand({config.num_latents}) < 0.4;
  ExpectEquivalent(config, dead);
}

TEST_P(GradientEquivalence, AuxKWithFewerDeadThanKAux) {
  const auto config = Config(Architecture::kTopK);
  auto dead = torch::zeros({config.num_latents}, torch::kBool);
  dead.narrow(0, 10, 5).fill_(true);  // 5 dead < k_aux = 32
  ExpectEquivalent(config, dead);
}

TEST_P(GradientEquivalence, AuxKTermChangesTheGradient) {
  // Guards against an AuxK path that silently does nothing.
  const auto config = Config(Architecture::kTopK);
  torch::manual_seed(5);
  const auto x = torch::randn({96, config.d_in});
  SaeModel model = MakeModel(config, x);
  const auto dead = torch::rand({config.num_latents}) < 0.4;
  const Gradients with = RunStep(model, x, dead, ComputePath::kSparse);
  const Gradients without = RunStep(model, x, torch::Tensor(), ComputePath::kSparse);
  EXPECT_GT(with.out.auxk_loss, 0);
  EXPECT_GT(RelativeError(with.grads[0], without.grads[0]), 1e-3);
}

TEST_P(GradientEquivalence, ChunkedEncoderWithAuxKMatchesTheWholeMatrix) {
  // Chunks of 40 and of 1 latent (n = 192: the last chunk is partial): the running top-k over
  // chunks must select exactly what torch::topk selects on the dense B x n reference.
  for (int64_t chunk : {40, 1}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    auto config = Config(Architecture::kTopK);
    config.encoder_chunk_latents = chunk;
    torch::manual_seed(9);
    const auto dead = torch::rand({config.num_latents}) < 0.4;
    ExpectEquivalent(config, dead);
  }
}

TEST_P(GradientEquivalence, BFloat16EncoderRanksAndFloat32ValuesAreExact) {
  // bf16 only ranks the latents: the selected pre-activations must be the exact float32 ones,
  // and the selection may differ from the float32 top-k only within bf16 rounding.
  auto config = Config(Architecture::kTopK);
  config.compute_dtype = ComputeDtype::kBFloat16;
  config.encoder_chunk_latents = 64;
  torch::manual_seed(5);
  const auto x = torch::randn({96, config.d_in}) * 2 + 0.5;
  SaeModel model = MakeModel(config, x);
  const Gradients g = RunStep(model, x, torch::Tensor(), ComputePath::kSparse);
  torch::NoGradGuard no_grad;
  const auto& p = model.params();
  const auto exact = torch::addmm(p.b_enc, x.to(torch::kDouble).sub(p.b_pre.to(torch::kDouble)).to(torch::kFloat),
                                  p.w_enc.t());
  EXPECT_LT(RelativeError(g.out.acts, torch::relu(exact.gather(1, g.out.indices))), 1e-6);
  // Each selected value is at least the true k-th value less the bf16 rounding of a row.
  const auto kth = std::get<0>(exact.topk(config.k, 1, true, true)).narrow(1, config.k - 1, 1);
  const auto selected_min = std::get<0>(exact.gather(1, g.out.indices).min(1, true));
  const auto slack = exact.abs().amax(1, true) * (2.0 / 128);
  EXPECT_TRUE((selected_min >= kth - slack).all().item<bool>());
  // And most rows select exactly the float32 top-k.
  const auto exact_ids = std::get<0>(std::get<1>(exact.topk(config.k, 1, true, true)).sort(1));
  const auto same_rows = (std::get<0>(g.out.indices.sort(1)) == exact_ids).all(1).to(torch::kDouble).mean().item<double>();
  EXPECT_GT(same_rows, 0.8);
  for (const auto& grad : g.grads) EXPECT_GT(grad.norm().item<double>(), 0);
}

TEST_P(GradientEquivalence, ReLU) {
  ExpectEquivalent(Config(Architecture::kReLU), torch::Tensor());
}

TEST_P(GradientEquivalence, BatchTopK) {
  ExpectEquivalent(Config(Architecture::kBatchTopK), torch::Tensor());
}

TEST_P(GradientEquivalence, BatchTopKWithAuxKInChunks) {
  auto config = Config(Architecture::kBatchTopK);
  config.encoder_chunk_latents = 40;
  torch::manual_seed(9);
  ExpectEquivalent(config, torch::rand({config.num_latents}) < 0.4);
}

TEST_P(GradientEquivalence, JumpReLU) {
  ExpectEquivalent(Config(Architecture::kJumpReLU), torch::Tensor());
}

TEST_P(GradientEquivalence, JumpReLUWithTargetL0InChunks) {
  auto config = Config(Architecture::kJumpReLU);
  config.target_l0 = 20;
  config.encoder_chunk_latents = 40;
  ExpectEquivalent(config, torch::Tensor());
}

TEST_P(GradientEquivalence, Matryoshka) {
  torch::manual_seed(9);
  const auto config = Config(Architecture::kMatryoshka);
  ExpectEquivalent(config, torch::rand({config.num_latents}) < 0.4);
}

TEST_P(GradientEquivalence, BatchTopKKeepsKTimesBatchActivations) {
  // k * B entries over the batch, not k per token: the counts differ between tokens.
  const auto config = Config(Architecture::kBatchTopK);
  torch::manual_seed(5);
  const auto x = torch::randn({96, config.d_in}) * 2 + 0.5;
  SaeModel model = MakeModel(config, x);
  const Gradients g = RunStep(model, x, torch::Tensor(), ComputePath::kSparse);
  const auto per_token = (g.out.acts > 0).sum(1);
  EXPECT_EQ(per_token.sum().item<int64_t>(), config.k * x.size(0));
  EXPECT_GT(per_token.max().item<int64_t>(), per_token.min().item<int64_t>());
  // Every kept activation is at least every dropped positive pre-activation.
  torch::NoGradGuard no_grad;
  const auto pre = torch::addmm(model.params().b_enc, x - model.params().b_pre, model.params().w_enc.t());
  const double kth = std::get<0>(pre.reshape({-1}).topk(config.k * x.size(0)))[-1].item<double>();
  EXPECT_NEAR(g.out.acts.masked_select(g.out.acts > 0).min().item<double>(), kth, 1e-6);
}

TEST_P(GradientEquivalence, JumpReLUThresholdGradientIsTheStraightThroughEstimator) {
  // The log-threshold gradient written out by hand (Rajamanoharan et al.'s pseudo-derivatives
  // with the rectangle kernel), in float64:
  //   dL/dtheta_i = sum over tokens b with |pre_bi - theta_i| < eps/2 of
  //                 -(theta_i / eps) dL/dz_bi - (1 / eps) l0_coefficient / B,
  //   dL/dz_bi = -2 (x_b - x_hat_b) . W_dec_i / Var,  and dL/dlog(theta_i) = theta_i dL/dtheta_i.
  auto config = Config(Architecture::kJumpReLU);
  torch::manual_seed(5);
  const auto x = torch::randn({96, config.d_in}) * 2 + 0.5;
  SaeModel model = MakeModel(config, x);
  const Gradients g = RunStep(model, x, torch::Tensor(), ComputePath::kSparse);
  torch::NoGradGuard no_grad;
  const auto& p = model.params();
  const auto xd = x.to(torch::kDouble);
  const auto pre = torch::addmm(p.b_enc.to(torch::kDouble), xd - p.b_pre.to(torch::kDouble),
                                p.w_enc.to(torch::kDouble).t());
  const auto theta = p.log_threshold.to(torch::kDouble).exp();
  const double eps = config.jumprelu_bandwidth;
  const auto z = pre * (pre > theta).to(torch::kDouble);
  const auto x_hat = z.mm(p.w_dec.to(torch::kDouble)) + p.b_pre.to(torch::kDouble);
  const double variance = (xd - xd.mean(0)).pow(2).sum().item<double>();
  const auto d_z = (-2.0 / variance) * (xd - x_hat).mm(p.w_dec.to(torch::kDouble).t());
  const auto window = ((pre - theta).abs() < eps / 2).to(torch::kDouble);
  const auto d_theta = (window * (-(theta / eps) * d_z - config.l0_coefficient / (eps * x.size(0)))).sum(0);
  const auto expected = (theta * d_theta).to(torch::kFloat);
  const int64_t in_window = (window.sum(0) > 0).sum().item<int64_t>();
  ASSERT_GT(in_window, 10);
  ASSERT_LT(in_window, config.num_latents);  // and latents with nothing in the window get 0
  EXPECT_LT(RelativeError(g.grads[4], expected), 1e-4);
}

TEST_P(GradientEquivalence, DecoderGradientProjectionRemovesParallelComponent) {
  const auto config = Config(Architecture::kTopK);
  torch::manual_seed(5);
  const auto x = torch::randn({32, config.d_in});
  SaeModel model = MakeModel(config, x);
  RunStep(model, x, torch::Tensor(), ComputePath::kSparse);
  model.ProjectDecoderGradient();
  const auto dots = (model.params().w_dec.grad() * model.params().w_dec).sum(1);
  EXPECT_LT(dots.abs().max().item<double>(), 1e-5);
  {
    torch::NoGradGuard no_grad;
    model.params().w_dec.mul_(3);
  }
  model.RenormalizeDecoder();
  const auto norms = model.params().w_dec.norm(2, 1);
  EXPECT_LT((norms - 1).abs().max().item<double>(), 1e-6);
}

SAEGRID_INSTANTIATE_ON_KERNEL_PATHS(GradientEquivalence);

}  // namespace
}  // namespace saegrid
