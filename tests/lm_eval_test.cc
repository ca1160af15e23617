// The model-based evaluations (engine/eval/) on a tiny GPT-2 with known answers: an exact SAE
// spliced in recovers all of the loss with no KL, an SAE that reconstructs nothing is zero
// ablation, excluded positions are neither edited nor scored, ablating a latent that copies a
// hookpoint coordinate has exactly the coordinate baseline's effect, the sparsity and token
// statistics match hand computation, the top examples are the highest firings with their
// windows, and the whole suite runs on the tiny model.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/eval/ablation_sparsity.h"
#include "engine/eval/downstream_loss.h"
#include "engine/eval/latent_firings.h"
#include "engine/eval/spliced_sae.h"
#include "engine/eval/suite.h"
#include "engine/lm/language_model.h"
#include "tests/test_support.h"
#include "tests/tiny_models.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;
using testing::kD;
using testing::kVocab;
using testing::TempDir;

constexpr int64_t kContext = 16;
constexpr int64_t kSequences = 12;
constexpr int64_t kBos = 0;
const char kHook[] = "blocks.1.hook_resid_post";

// An exact SAE of d-dimensional inputs: latents e_j and -e_j (2d of them), k = d, so that each
// token selects, for every coordinate, the sign its value has, and decodes to itself.
struct ExactSae {
  ModelConfig config;
  SaeParameters params;
};
ExactSae MakeExactSae(int64_t d) {
  ExactSae s;
  s.config.d_in = d;
  s.config.num_latents = 2 * d;
  s.config.k = d;
  const auto eye = torch::eye(d);
  const auto rows = torch::cat({eye, -eye});
  s.params = {rows.clone(), torch::zeros({2 * d}), rows.clone(), torch::zeros({d})};
  return s;
}

class LmEval : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteModel(dir_ / "model", testing::Gpt2(), {});
    torch::manual_seed(11);
    ids_ = torch::randint(1, kVocab, {kSequences, kContext}, torch::kLong);
    ids_.select(1, 0).fill_(kBos);
    testing::WriteTokenIds(dir_ / "tokens.bin", ids_);
    auto model = LoadLanguageModel(dir_ / "model");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto hook = ParseHookpoint(kHook, testing::kLayers);
    ASSERT_TRUE(hook.ok());
    hook_ = *hook;
  }

  // Next-token cross-entropy of the clean model, written out position by position.
  double CleanCrossEntropy(bool skip_bos) const {
    torch::Tensor logits;
    EXPECT_TRUE(model_->Forward(ids_, {}, &logits).ok());
    double sum = 0;
    int64_t count = 0;
    for (int64_t s = 0; s < kSequences; ++s) {
      for (int64_t t = 0; t + 1 < kContext; ++t) {
        if (skip_bos && ids_[s][t].item<int64_t>() == kBos) continue;
        const auto log_probs = torch::log_softmax(logits[s][t].to(torch::kDouble), 0);
        sum -= log_probs[ids_[s][t + 1].item<int64_t>()].item<double>();
        ++count;
      }
    }
    return sum / count;
  }

  TempDir dir_;
  torch::Tensor ids_;
  std::unique_ptr<LanguageModel> model_;
  Hookpoint hook_;
};

TEST_F(LmEval, AnExactSaeSplicedInRecoversAllOfTheLossWithNoKl) {
  const ExactSae sae = MakeExactSae(kD);
  const SplicedSae spliced(*model_, hook_, sae.config, sae.params, {kBos}, torch::kCPU);
  auto r = MeasureDownstreamLoss(spliced, ids_, 5);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sequences, kSequences);
  EXPECT_EQ(r->positions, kSequences * (kContext - 2));  // BOS at 0 is not scored; T - 1 predictions
  EXPECT_NEAR(r->ce_clean, CleanCrossEntropy(/*skip_bos=*/true), 1e-5);  // float32 log-softmax
  EXPECT_NEAR(r->ce_sae, r->ce_clean, 1e-5);
  EXPECT_NEAR(r->loss_recovered, 1.0, 1e-4);
  EXPECT_NEAR(r->kl_sae, 0.0, 1e-6);
  // Zeroing the layer must change the loss for loss recovered to mean anything (on this random
  // model it lowers it: the clean model is worse than uniform on random tokens).
  EXPECT_GT(std::abs(r->ce_zero_ablation - r->ce_clean), 0.01);
  EXPECT_GT(r->kl_zero_ablation, 0.01);
  EXPECT_TRUE(std::isfinite(r->ce_mean_ablation));
}

TEST_F(LmEval, AnSaeThatReconstructsNothingIsZeroAblation) {
  ExactSae sae = MakeExactSae(kD);
  sae.params.w_dec.zero_();
  const SplicedSae spliced(*model_, hook_, sae.config, sae.params, {kBos}, torch::kCPU);
  auto r = MeasureDownstreamLoss(spliced, ids_, 4);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->ce_sae, r->ce_zero_ablation, 1e-9);
  EXPECT_NEAR(r->loss_recovered, 0.0, 1e-9);
  EXPECT_NEAR(r->kl_sae, r->kl_zero_ablation, 1e-9);
}

TEST_F(LmEval, ExcludedPositionsAreNeitherEditedNorScored) {
  // Nothing excluded: every prediction is scored, BOS included.
  const ExactSae sae = MakeExactSae(kD);
  const SplicedSae all(*model_, hook_, sae.config, sae.params, {}, torch::kCPU);
  auto r = MeasureDownstreamLoss(all, ids_, 6);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->positions, kSequences * (kContext - 1));
  EXPECT_NEAR(r->ce_clean, CleanCrossEntropy(/*skip_bos=*/false), 1e-5);
  // An SAE that zeroes everything, with BOS excluded: BOS keeps its clean activation, so the
  // zero-ablated model differs from one where BOS is zeroed too.
  ExactSae zero = MakeExactSae(kD);
  zero.params.w_dec.zero_();
  const SplicedSae keep_bos(*model_, hook_, zero.config, zero.params, {kBos}, torch::kCPU);
  const SplicedSae edit_bos(*model_, hook_, zero.config, zero.params, {}, torch::kCPU);
  auto kept = MeasureDownstreamLoss(keep_bos, ids_, 6);
  auto edited = MeasureDownstreamLoss(edit_bos, ids_, 6);
  ASSERT_TRUE(kept.ok() && edited.ok());
  EXPECT_GT(std::abs(kept->ce_zero_ablation - edited->ce_zero_ablation), 1e-4);
  // Every position excluded: an error, not a division by zero.
  auto none = MeasureDownstreamLoss(keep_bos, torch::zeros({2, kContext}, torch::kLong), 2);
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("every position is excluded"));
}

TEST(AblationSparsityMath, HandComputedValues) {
  // One logit moved: the median (0) stays, L1 = 3, L2^2 = 9: 9 / 9 / 4 = 1/(V*T).
  EXPECT_NEAR(LogitEffectSparsity(torch::tensor({{0.0, 0.0, 0.0, 3.0}})), 0.25, 1e-12);
  // [1, 2, 3, 4]: median 2.5, centred [-1.5, -0.5, 0.5, 1.5]: L1 = 4, L2^2 = 5: 16 / 5 / 4.
  EXPECT_NEAR(LogitEffectSparsity(torch::tensor({{1.0, 2.0, 3.0, 4.0}})), 0.8, 1e-12);
  // Each position is centred on its own median: a constant shift per position is no effect.
  EXPECT_NEAR(LogitEffectSparsity(torch::tensor({{5.0, 5.0, 5.0, 8.0}, {-2.0, -2.0, -2.0, -2.0}})),
              9.0 / 9.0 / 8.0, 1e-12);
  // No effect at all is undefined, not 0 or 1.
  EXPECT_TRUE(std::isnan(LogitEffectSparsity(torch::zeros({2, 4}))));
}

TEST_F(LmEval, AblatingALatentThatCopiesACoordinateIsTheCoordinateBaseline) {
  const ExactSae sae = MakeExactSae(kD);
  const SplicedSae spliced(*model_, hook_, sae.config, sae.params, {kBos}, torch::kCPU);
  auto acts = spliced.Activations(ids_);
  ASSERT_TRUE(acts.ok());
  constexpr int64_t kHorizon = 6;
  std::vector<PositionEdit> latent_edits, coordinate_edits;
  for (int64_t s = 0; s < 3; ++s) {
    const int64_t position = 2 + s, coordinate = 5 * s + 1;
    const auto raw = (*acts)[s][position];
    const double value = raw[coordinate].item<double>();
    // The latent carrying this coordinate is e_j when the value is positive, -e_j otherwise; its
    // activation is |value|.
    const int64_t latent = value > 0 ? coordinate : kD + coordinate;
    latent_edits.push_back({s, position, -spliced.LatentContribution(raw, latent, std::abs(value))});
    auto delta = torch::zeros({kD});
    delta[coordinate] = -value;
    coordinate_edits.push_back({s, position, delta});
  }
  auto by_latent = EditEffectSparsity(spliced, ids_, latent_edits, kHorizon, 2);
  auto by_coordinate = EditEffectSparsity(spliced, ids_, coordinate_edits, kHorizon, 3);
  ASSERT_TRUE(by_latent.ok() && by_coordinate.ok());
  for (size_t i = 0; i < by_latent->size(); ++i) {
    EXPECT_TRUE(std::isfinite((*by_latent)[i]));
    EXPECT_NEAR((*by_latent)[i], (*by_coordinate)[i], 1e-6);
    EXPECT_GT((*by_latent)[i], 1.0 / (kVocab * kHorizon));
    EXPECT_LE((*by_latent)[i], 1.0);
  }
  // A window that runs past the sequence is refused by name.
  auto past = EditEffectSparsity(spliced, ids_, {{0, kContext - 2, torch::zeros({kD})}}, kHorizon);
  ASSERT_FALSE(past.ok());
  EXPECT_THAT(std::string(past.status().message()), HasSubstr("leaves fewer than 6 positions"));
}

TEST_F(LmEval, AblationSparsityOfSampledLatentsComesWithItsBaseline) {
  const ExactSae sae = MakeExactSae(kD);
  const SplicedSae spliced(*model_, hook_, sae.config, sae.params, {kBos}, torch::kCPU);
  AblationSparsityOptions o;
  o.latents = 5;
  o.tokens_per_latent = 2;
  o.horizon = 4;
  auto r = MeasureAblationSparsity(spliced, ids_, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->latents, 5);
  EXPECT_EQ(r->samples, 10);
  EXPECT_EQ(r->baseline_samples, 10);
  EXPECT_EQ(r->vocab, kVocab);
  for (double v : {r->mean, r->median, r->baseline_mean, r->baseline_median}) {
    EXPECT_GT(v, 1.0 / (kVocab * 4));
    EXPECT_LE(v, 1.0);
  }
  // The same seed samples the same ablations.
  auto again = MeasureAblationSparsity(spliced, ids_, o);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->mean, r->mean);
  o.horizon = kContext + 1;
  EXPECT_FALSE(MeasureAblationSparsity(spliced, ids_, o).ok());
}

// Firings written by hand: vocabulary 4, one sequence [0, 1, 2, 3, 0, 1].
LatentFirings HandFirings() {
  LatentFirings f;
  f.ids = torch::tensor({{0, 1, 2, 3, 0, 1}}, torch::kLong);
  f.kept = torch::ones({1, 6}, torch::kBool);
  f.num_latents = 3;
  f.vocab = 4;
  // Latent 0 fires 1 on both 0s; latent 1 fires 1 on the first 1 and 1 on the 2; latent 2 never.
  f.latent = torch::tensor({0, 0, 1, 1}, torch::kLong);
  f.row = torch::tensor({0, 4, 1, 2}, torch::kLong);
  f.activation = torch::tensor({1.0f, 1.0f, 1.0f, 1.0f});
  return f;
}

TEST(TokenStatistics, HandComputedEntropyAndEffectiveTokens) {
  const TokenStatistics s = ComputeTokenStatistics(HandFirings());
  // Latent 0: all its squared activation on token 0: entropy 0, one effective token.
  EXPECT_NEAR(s.entropy[0].item<double>(), 0.0, 1e-12);
  EXPECT_NEAR(s.effective_tokens[0].item<double>(), 1.0, 1e-12);
  // Latent 1: A(1) = 1/2 (token 1 occurs twice, fired once), A(2) = 1: p = [1/3, 2/3].
  const double h = -(1.0 / 3 * std::log(1.0 / 3) + 2.0 / 3 * std::log(2.0 / 3));
  EXPECT_NEAR(s.entropy[1].item<double>(), h, 1e-12);
  EXPECT_NEAR(s.effective_tokens[1].item<double>(), std::exp(h), 1e-12);
  // Latent 2 never fired: undefined, and left out of the summaries.
  EXPECT_TRUE(std::isnan(s.entropy[2].item<double>()));
  EXPECT_EQ(s.latents_fired, 2);
  EXPECT_NEAR(s.mean_effective_tokens, (1.0 + std::exp(h)) / 2, 1e-12);
  EXPECT_EQ(s.effective_tokens_histogram, (std::vector<int64_t>{2}));  // both in [1, 2)
}

TEST(TopExamples, AreTheHighestFiringsWithTheirWindows) {
  LatentFirings f = HandFirings();
  f.activation = torch::tensor({0.5f, 2.0f, 1.0f, 3.0f});
  const auto top = TopActivations(f, 1);
  ASSERT_EQ(top.size(), 3u);
  ASSERT_EQ(top[0].size(), 1u);
  EXPECT_EQ(top[0][0].position, 4);  // latent 0's 2.0 at position 4 beats its 0.5 at 0
  EXPECT_EQ(top[1][0].position, 2);
  EXPECT_TRUE(top[2].empty());
  const auto j = TopExamplesJson(f, TopActivations(f, 2), nullptr, 2, 1, 100);
  EXPECT_EQ(j["format"], "saegrid.top_examples.v1");
  ASSERT_EQ(j["latents"].size(), 2u);  // latent 2 has no examples
  const auto& first = j["latents"][0]["examples"][0];
  EXPECT_EQ(first["sequence"], 100);
  EXPECT_EQ(first["position"], 4);
  EXPECT_EQ(first["tokens"], (std::vector<int64_t>{2, 3, 0, 1}));  // positions 2..5
  EXPECT_EQ(first["focus"], 2);
  EXPECT_EQ(first["activations"], (std::vector<float>{0, 0, 2.0f, 0}));
  EXPECT_DOUBLE_EQ(j["latents"][0]["density"].get<double>(), 2.0 / 6);
  EXPECT_EQ(j["latents"][0]["examples"][1]["position"], 0);
}

TEST_F(LmEval, TheSuiteRunsEveryModelEvaluationOnATinyModel) {
  const ExactSae sae = MakeExactSae(kD);
  TrainConfig c;
  c.data.language_model.model_path = dir_ / "model";
  c.data.language_model.tokens_path = dir_ / "tokens.bin";
  c.data.language_model.context_length = kContext;
  c.data.language_model.hookpoint = kHook;
  c.data.language_model.exclude_token_ids = {kBos};
  c.data.eval_fraction = 0.5;
  c.evaluation.language_model.sequences = 6;
  c.evaluation.language_model.ablation_latents = 3;
  c.evaluation.language_model.ablation_horizon = 4;
  c.evaluation.language_model.n2g_latents = 3;
  c.evaluation.language_model.n2g_examples = 4;
  c.evaluation.language_model.top_examples = 3;
  SuiteInputs in;
  in.config = &c;
  in.model = sae.config;
  in.params = &sae.params;
  std::vector<std::string> seen;
  in.progress = [&](const std::string& name, double fraction) {
    if (fraction == 0) seen.push_back(name);
  };
  auto r = RunEvaluationSuite(in, {"n2g", "top_examples", "token_stats", "ablation_sparsity", "downstream_loss"});
  ASSERT_TRUE(r.ok()) << r.status();
  // The suite's order, whatever the caller's.
  EXPECT_EQ(r->ran, (std::vector<std::string>{"downstream_loss", "ablation_sparsity", "token_stats", "top_examples", "n2g"}));
  EXPECT_EQ(seen, r->ran);
  ASSERT_TRUE(r->downstream_loss && r->ablation_sparsity && r->token_stats && r->top_examples && r->n2g);
  EXPECT_EQ(r->split, "held_out");
  EXPECT_EQ(r->downstream_loss->sequences, 6);
  EXPECT_NEAR(r->downstream_loss->loss_recovered, 1.0, 1e-4);
  EXPECT_EQ(r->token_stats->kept_tokens, 6 * (kContext - 1));
  EXPECT_GT(r->token_stats->latents_fired, 0);
  EXPECT_GE(r->token_stats->mean_effective_tokens, 1.0);
  EXPECT_EQ(r->n2g->latents, 3);
  EXPECT_EQ(r->n2g->per_latent.size(), 3u);
  for (const auto& l : r->n2g->per_latent) EXPECT_FALSE(l.patterns.empty());
  // The held-out sequences are numbered as in the token file: the last 6 of 12.
  for (const auto& latent : r->top_examples->file["latents"]) {
    for (const auto& e : latent["examples"]) EXPECT_GE(e["sequence"].get<int64_t>(), kSequences - 6);
  }
  const auto j = SuiteReportToJson(*r);
  EXPECT_TRUE(j.contains("downstream_loss") && j.contains("n2g") && j.contains("ablation_sparsity"));
  EXPECT_THAT(FormatSuiteTable(*r), HasSubstr("loss recovered"));
  // Model evaluations without a model, and unknown names, are refused by name.
  TrainConfig files;
  files.data.path = "/x";
  in.config = &files;
  auto no_model = RunEvaluationSuite(in, {"downstream_loss"});
  ASSERT_FALSE(no_model.ok());
  EXPECT_THAT(std::string(no_model.status().message()), HasSubstr("downstream_loss needs data.language_model"));
  auto unknown = RunEvaluationSuite(in, {"vibes"});
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("unknown evaluation \"vibes\""));
}

}  // namespace
}  // namespace saegrid
