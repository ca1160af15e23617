// N2G explanations (engine/eval/n2g.h) with hand-written latents behind the activation callback:
// bigram, skip-gram (wildcard), sequence-start (anchored) and unigram latents get the known
// patterns and score perfectly on held-out text; pruning takes the shortest passing suffix and
// falls back to the full context; scores match hand-computed counts, rates and zero-denominator
// conventions; every invalid input and callback failure is refused by name.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/eval/n2g.h"

namespace saegrid {

// Readable patterns in failure messages (found by argument-dependent lookup).
void PrintTo(const N2GPattern& pattern, std::ostream* os) {
  *os << "\"" << N2GPatternToString(pattern) << "\"";
}

namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using Tokens = std::vector<int64_t>;
// A latent as a function of the context (from the sequence start to the token it is read at).
using Latent = std::function<double(const Tokens& context)>;

// The callback of a latent; counts calls and contexts.
struct Callback {
  explicit Callback(Latent f) : latent(std::move(f)) {}
  LatentActivationFn Fn() {
    return [this](const std::vector<Tokens>& contexts) -> absl::StatusOr<std::vector<double>> {
      ++calls;
      num_contexts += static_cast<int64_t>(contexts.size());
      std::vector<double> values;
      for (const Tokens& c : contexts) values.push_back(latent(c));
      return values;
    };
  }
  Latent latent;
  int calls = 0;
  int64_t num_contexts = 0;
};

// The latent's true activation at every position of each sequence.
std::vector<std::vector<double>> TrueActivations(const Latent& latent,
                                                 const std::vector<Tokens>& sequences) {
  std::vector<std::vector<double>> out;
  for (const Tokens& s : sequences) {
    out.emplace_back();
    for (size_t t = 0; t < s.size(); ++t) out.back().push_back(latent(Tokens(s.begin(), s.begin() + t + 1)));
  }
  return out;
}

int64_t Back(const Tokens& c, size_t k) { return c.size() > k ? c[c.size() - 1 - k] : -100; }

N2GPattern P(Tokens tokens, bool anchored = false) { return N2GPattern{std::move(tokens), anchored}; }

N2GOptions Options() {
  N2GOptions o;
  o.replacement_tokens = {1, 2, 3};
  o.filler_tokens = {1, 2};
  return o;
}

N2GExample Ex(Tokens context, double activation = 1.0) { return N2GExample{std::move(context), activation}; }

// Held-out text: several positions where 7, 9, 5 and 6 occur in various arrangements.
const std::vector<Tokens>& HeldOut() {
  static const std::vector<Tokens> sequences = {
      {7, 9, 7, 9},       {9, 7, 3, 9, 7, 9, 9}, {5, 5, 5},          {7, 0, 9, 7, 7, 9},
      {5, 8, 6, 9, 9, 7}, {6, 5, 6, 7, 1, 9},    {4, 4, 7, 3, 3, 9}, {9}};
  return sequences;
}

TEST(N2G, BigramLatentGetsTheBigramAsItsExplanation) {
  Callback cb([](const Tokens& c) { return Back(c, 0) == 9 && Back(c, 1) == 7 ? 1.0 : 0.0; });
  const std::vector<N2GExample> examples = {Ex({1, 2, 7, 9}), Ex({3, 7, 9}), Ex({7, 9}),
                                            Ex({4, 4, 4, 7, 9}, 1.0)};
  auto explanation = BuildN2GExplanation(examples, cb.Fn(), Options());
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_THAT(explanation->patterns, ElementsAre(P({7, 9})));
  // One batched call for pruning (4 + 3 + 2 + 5 suffixes), one for the checks: 3 replacements of
  // the 7 and 1 filler probe per example.
  EXPECT_EQ(cb.calls, 2);
  EXPECT_EQ(cb.num_contexts, 14 + 4 * 4);

  auto score = ScoreN2G(*explanation, HeldOut(), TrueActivations(cb.latent, HeldOut()));
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_EQ(score->true_positives, 4);
  EXPECT_EQ(score->false_positives, 0);
  EXPECT_EQ(score->false_negatives, 0);
  EXPECT_EQ(score->precision, 1.0);
  EXPECT_EQ(score->recall, 1.0);
  EXPECT_EQ(score->f1, 1.0);
}

TEST(N2G, SkipGramLatentGetsAWildcardInTheMiddle) {
  Callback cb([](const Tokens& c) { return Back(c, 0) == 9 && Back(c, 2) == 7 ? 2.0 : 0.0; });
  const std::vector<N2GExample> examples = {Ex({1, 7, 4, 9}, 2.0), Ex({7, 5, 9}, 2.0),
                                            Ex({2, 2, 7, 8, 9}, 2.0)};
  auto explanation = BuildN2GExplanation(examples, cb.Fn(), Options());
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_THAT(explanation->patterns, ElementsAre(P({7, kWildcard, 9})));
  EXPECT_EQ(N2GPatternToString(explanation->patterns[0]), "7 * 9");

  auto score = ScoreN2G(*explanation, HeldOut(), TrueActivations(cb.latent, HeldOut()));
  ASSERT_TRUE(score.ok()) << score.status();
  // 7 ? 9 in the held-out text: 7 3 9 and 7 9 9 (second), 7 0 9 and 7 7 9 (fourth), 7 1 9.
  EXPECT_EQ(score->true_positives, 5);
  EXPECT_EQ(score->false_positives, 0);
  EXPECT_EQ(score->false_negatives, 0);
  EXPECT_EQ(score->f1, 1.0);
}

TEST(N2G, SequenceStartLatentGetsAnAnchoredPattern) {
  // Fires at a 6 when the sequence starts with 5.
  Callback cb([](const Tokens& c) { return c.front() == 5 && c.back() == 6 ? 1.0 : 0.0; });
  const std::vector<N2GExample> examples = {Ex({5, 2, 6}), Ex({5, 6}), Ex({5, 3, 6})};
  auto explanation = BuildN2GExplanation(examples, cb.Fn(), Options());
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  // The 5 cannot be replaced, the middle token can; with filler before it the latent is silent.
  EXPECT_THAT(explanation->patterns, ElementsAre(P({5, kWildcard, 6}, true), P({5, 6}, true)));
  EXPECT_EQ(N2GPatternToString(explanation->patterns[0]), "^ 5 * 6");
  EXPECT_TRUE(explanation->Matches({5, 8, 6}, 2));
  EXPECT_FALSE(explanation->Matches({1, 5, 8, 6}, 3));
  EXPECT_FALSE(explanation->Matches({1, 5, 6}, 2));

  // {5,8,6,...} fires at 2 and is predicted; {6,5,6,...} neither fires nor is predicted at 2.
  auto score = ScoreN2G(*explanation, HeldOut(), TrueActivations(cb.latent, HeldOut()));
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_EQ(score->true_positives, 1);
  EXPECT_EQ(score->false_positives, 0);
  EXPECT_EQ(score->false_negatives, 0);
}

TEST(N2G, UnigramLatentGetsTheSingleToken) {
  Callback cb([](const Tokens& c) { return c.back() == 9 ? 3.0 : 0.0; });
  const std::vector<N2GExample> examples = {Ex({1, 2, 9}, 3.0), Ex({9}, 3.0), Ex({3, 9}, 3.0)};
  auto explanation = BuildN2GExplanation(examples, cb.Fn(), Options());
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_THAT(explanation->patterns, ElementsAre(P({9})));

  auto score = ScoreN2G(*explanation, HeldOut(), TrueActivations(cb.latent, HeldOut()));
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_EQ(score->true_positives, 13);  // the 9s of the held-out text
  EXPECT_EQ(score->false_positives + score->false_negatives, 0);
  EXPECT_EQ(score->f1, 1.0);
}

TEST(N2G, LeadingWildcardsOfAnUnanchoredPatternAreDropped) {
  // Fires at a 9 with at least two tokens before it, whatever they are: the pruned suffix is
  // {4, 5, 9}, both leading tokens are wildcards, and the filler keeps it firing.
  Callback cb([](const Tokens& c) { return c.size() >= 3 && c.back() == 9 ? 1.0 : 0.0; });
  auto explanation = BuildN2GExplanation({Ex({8, 4, 5, 9})}, cb.Fn(), Options());
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_THAT(explanation->patterns, ElementsAre(P({9})));
}

TEST(N2G, AnchoredPatternKeepsItsLeadingWildcards) {
  // Fires at a 9 at position 2 exactly: the leading wildcards fix the offset from the start.
  Callback cb([](const Tokens& c) { return c.size() == 3 && c.back() == 9 ? 1.0 : 0.0; });
  auto explanation = BuildN2GExplanation({Ex({4, 5, 9})}, cb.Fn(), Options());
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_THAT(explanation->patterns, ElementsAre(P({kWildcard, kWildcard, 9}, true)));
  EXPECT_TRUE(explanation->Matches({0, 0, 9}, 2));
  EXPECT_FALSE(explanation->Matches({0, 0, 0, 9}, 3));
  EXPECT_EQ(N2GPatternToString(explanation->patterns[0]), "^ * * 9");
}

TEST(N2G, ShortestPassingSuffixIsTakenEvenWhenLongerOnesDrop) {
  // 9 alone (at the sequence start) and the full context fire; the suffixes between do not.
  Callback cb([](const Tokens& c) {
    return c == Tokens{9} || c == Tokens{3, 4, 7, 9} ? 1.0 : 0.0;
  });
  auto explanation = BuildN2GExplanation({Ex({3, 4, 7, 9})}, cb.Fn(), Options());
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  // Filler before the 9 silences it: anchored.
  EXPECT_THAT(explanation->patterns, ElementsAre(P({9}, true)));
}

TEST(N2G, NoPassingSuffixFallsBackToTheFullContext) {
  // The recorded activation (10) is above what the callback ever gives (1 on the full context
  // only), so no suffix reaches 0.5 * 10: the full context is used, with the callback's 1.0 as
  // the reference of the checks. Every replacement and the filler silence it.
  Callback cb([](const Tokens& c) { return c == Tokens{3, 4, 7, 9} ? 1.0 : 0.0; });
  auto explanation = BuildN2GExplanation({Ex({3, 4, 7, 9}, 10.0)}, cb.Fn(), Options());
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_THAT(explanation->patterns, ElementsAre(P({3, 4, 7, 9}, true)));

  // A reference of 1.0 where the middle tokens do not matter: they become wildcards.
  Callback loose([](const Tokens& c) { return c.size() == 4 && c[0] == 3 && c[3] == 9 ? 1.0 : 0.0; });
  explanation = BuildN2GExplanation({Ex({3, 4, 7, 9}, 10.0)}, loose.Fn(), Options());
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_THAT(explanation->patterns, ElementsAre(P({3, kWildcard, kWildcard, 9}, true)));
}

TEST(N2G, CallbackThatNeverFiresKeepsTheFullContextLiterally) {
  // The reference is 0: wildcards and position cannot be judged, and no probe is asked for.
  Callback cb([](const Tokens&) { return 0.0; });
  auto explanation = BuildN2GExplanation({Ex({3, 4, 7, 9})}, cb.Fn(), Options());
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_THAT(explanation->patterns, ElementsAre(P({3, 4, 7, 9}, true)));
  EXPECT_EQ(cb.calls, 1);
}

TEST(N2G, WildcardNeedsAReplacementDifferentFromTheToken) {
  Latent skip = [](const Tokens& c) { return Back(c, 0) == 9 && Back(c, 2) == 7 ? 1.0 : 0.0; };
  N2GOptions options = Options();
  options.replacement_tokens = {4};  // the middle token itself: no evidence
  Callback cb(skip);
  auto explanation = BuildN2GExplanation({Ex({7, 4, 9})}, cb.Fn(), options);
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_THAT(explanation->patterns, ElementsAre(P({7, 4, 9})));

  options.replacement_tokens = {4, 5};
  explanation = BuildN2GExplanation({Ex({7, 4, 9})}, cb.Fn(), options);
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_THAT(explanation->patterns, ElementsAre(P({7, kWildcard, 9})));
}

TEST(N2G, NoReplacementOrFillerTokensMeansNoWildcardsAndNoAnchoring) {
  Callback cb([](const Tokens& c) { return c.front() == 5 && c.back() == 6 ? 1.0 : 0.0; });
  auto explanation = BuildN2GExplanation({Ex({5, 2, 6})}, cb.Fn(), N2GOptions());
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_THAT(explanation->patterns, ElementsAre(P({5, 2, 6})));
  EXPECT_EQ(cb.calls, 1);
}

TEST(N2G, OnlyTheFirstMaxTrainExamplesAreUsed) {
  Callback cb([](const Tokens& c) { return c.back() == 9 || c.back() == 8 ? 1.0 : 0.0; });
  N2GOptions options = Options();
  options.max_train_examples = 2;
  auto explanation = BuildN2GExplanation({Ex({1, 9}), Ex({9}), Ex({8})}, cb.Fn(), options);
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_THAT(explanation->patterns, ElementsAre(P({9})));
}

TEST(N2G, NoExamplesGiveAnEmptyExplanationWithoutCallingBack) {
  Callback cb([](const Tokens&) { return 1.0; });
  auto explanation = BuildN2GExplanation({}, cb.Fn(), Options());
  ASSERT_TRUE(explanation.ok()) << explanation.status();
  EXPECT_TRUE(explanation->patterns.empty());
  EXPECT_EQ(cb.calls, 0);
  EXPECT_FALSE(explanation->Matches({9}, 0));
}

TEST(N2G, PatternMatchingAtTheEdges) {
  const N2GPattern p = P({7, kWildcard, 9});
  EXPECT_TRUE(p.Matches({7, 0, 9}, 2));
  EXPECT_TRUE(p.Matches({1, 7, 0, 9}, 3));
  EXPECT_FALSE(p.Matches({0, 9}, 1));      // would start before the sequence
  EXPECT_FALSE(p.Matches({7, 0, 9}, 3));   // position past the end
  EXPECT_FALSE(p.Matches({7, 0, 9}, -1));
  EXPECT_FALSE(P({}).Matches({7}, 0));     // an empty pattern matches nothing
  EXPECT_TRUE(P({7}, true).Matches({7, 7}, 0));
  EXPECT_FALSE(P({7}, true).Matches({7, 7}, 1));
}

TEST(N2G, PatternTextUsesTheTokenTexts) {
  const std::map<int64_t, std::string> vocab = {{10, "the"}, {11, "cat"}};
  const TokenTextFn text = [&](int64_t id) { return vocab.at(id); };
  EXPECT_EQ(N2GPatternToString(P({10, kWildcard, 11}), text), "the * cat");
  EXPECT_EQ(N2GPatternToString(P({10, kWildcard, 11}, true), text), "^ the * cat");
  EXPECT_EQ(N2GPatternToString(P({11}), text), "cat");
  EXPECT_EQ(N2GPatternToString(P({7, 9})), "7 9");
}

TEST(N2G, ScoreEqualsTheHandComputedCounts) {
  const N2GExplanation explanation{{P({7, 9}), P({5}, true)}};
  const std::vector<Tokens> sequences = {{5, 7, 9, 9}, {7, 9, 5, 3}, {5, 5}};
  const std::vector<std::vector<double>> activations = {
      {0.0, 0.0, 2.0, 0.5}, {0.0, 0.0, 1.0, 0.0}, {0.3, 0.2}};
  // Threshold 0. Predicted: s0 t0 (^5), s0 t2 (7 9), s1 t1 (7 9), s2 t0 (^5).
  //   s0: t0 predicted, silent -> FP; t1 -> TN; t2 predicted, 2.0 -> TP; t3 not, 0.5 -> FN.
  //   s1: t0 TN; t1 predicted, silent -> FP; t2 not (5 not at 0), 1.0 -> FN; t3 TN.
  //   s2: t0 predicted, 0.3 -> TP; t1 not, 0.2 -> FN.
  // TP 2, FP 2, FN 3: precision 2/4 = 0.5, recall 2/5 = 0.4, F1 = 2*0.5*0.4/0.9 = 4/9.
  auto score = ScoreN2G(explanation, sequences, activations);
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_EQ(score->true_positives, 2);
  EXPECT_EQ(score->false_positives, 2);
  EXPECT_EQ(score->false_negatives, 3);
  EXPECT_DOUBLE_EQ(score->precision, 0.5);
  EXPECT_DOUBLE_EQ(score->recall, 0.4);
  EXPECT_DOUBLE_EQ(score->f1, 4.0 / 9.0);

  // Threshold 0.4: firing are 2.0, 0.5 and 1.0 only. TP: s0 t2. FP: s0 t0, s1 t1, s2 t0 (0.3).
  // FN: s0 t3, s1 t2. Precision 1/4, recall 1/3, F1 = 2*(1/12)/(7/12) = 2/7.
  score = ScoreN2G(explanation, sequences, activations, 0.4);
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_EQ(score->true_positives, 1);
  EXPECT_EQ(score->false_positives, 3);
  EXPECT_EQ(score->false_negatives, 2);
  EXPECT_DOUBLE_EQ(score->precision, 0.25);
  EXPECT_DOUBLE_EQ(score->recall, 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(score->f1, 2.0 / 7.0);

  // Scoring the sets apart and pooling the counts equals scoring them together.
  auto first = ScoreN2G(explanation, {sequences[0]}, {activations[0]});
  auto rest = ScoreN2G(explanation, {sequences[1], sequences[2]}, {activations[1], activations[2]});
  ASSERT_TRUE(first.ok() && rest.ok());
  const N2GScore pooled =
      MakeN2GScore(first->true_positives + rest->true_positives,
                   first->false_positives + rest->false_positives,
                   first->false_negatives + rest->false_negatives);
  EXPECT_EQ(pooled.true_positives, 2);
  EXPECT_DOUBLE_EQ(pooled.f1, 4.0 / 9.0);
}

TEST(N2G, ZeroDenominatorsHaveTheDocumentedValues) {
  const std::vector<Tokens> sequences = {{7, 9}};
  // Nothing predicted, something fires: precision 1 (undefined), recall 0, F1 0.
  auto score = ScoreN2G(N2GExplanation{}, sequences, {{0.0, 1.0}});
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_FALSE(score->precision_defined());
  EXPECT_TRUE(score->recall_defined());
  EXPECT_EQ(score->precision, 1.0);
  EXPECT_EQ(score->recall, 0.0);
  EXPECT_EQ(score->f1, 0.0);
  // Something predicted, nothing fires: precision 0, recall 1 (undefined), F1 0.
  score = ScoreN2G(N2GExplanation{{P({9})}}, sequences, {{0.0, 0.0}});
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_TRUE(score->precision_defined());
  EXPECT_FALSE(score->recall_defined());
  EXPECT_EQ(score->precision, 0.0);
  EXPECT_EQ(score->recall, 1.0);
  EXPECT_EQ(score->f1, 0.0);
  // Nothing predicted, nothing fires (a NaN activation does not fire): all 1, none defined.
  score = ScoreN2G(N2GExplanation{}, sequences, {{0.0, std::nan("")}});
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_FALSE(score->precision_defined());
  EXPECT_FALSE(score->recall_defined());
  EXPECT_EQ(score->precision, 1.0);
  EXPECT_EQ(score->recall, 1.0);
  EXPECT_EQ(score->f1, 1.0);
  // No sequences at all: the same.
  score = ScoreN2G(N2GExplanation{}, {}, {});
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_EQ(score->f1, 1.0);
}

void ExpectInvalid(const absl::Status& status, const std::string& names) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(names));
}

TEST(N2G, InvalidInputsAreRefusedByName) {
  Callback cb([](const Tokens& c) { return c.back() == 9 ? 1.0 : 0.0; });
  ExpectInvalid(BuildN2GExplanation({Ex({9}), Ex({})}, cb.Fn(), Options()).status(),
                "examples[1].context");
  ExpectInvalid(BuildN2GExplanation({Ex({9, -1})}, cb.Fn(), Options()).status(),
                "examples[0].context[1]");
  ExpectInvalid(BuildN2GExplanation({Ex({9}, 0.0)}, cb.Fn(), Options()).status(),
                "examples[0].activation");
  ExpectInvalid(BuildN2GExplanation({Ex({9}, std::nan(""))}, cb.Fn(), Options()).status(),
                "examples[0].activation");
  for (double keep : {0.0, -0.5, 1.5, std::nan("")}) {
    N2GOptions options = Options();
    options.keep_fraction = keep;
    ExpectInvalid(BuildN2GExplanation({Ex({9})}, cb.Fn(), options).status(), "keep_fraction");
  }
  N2GOptions options = Options();
  options.keep_fraction = 1.0;  // the upper end is allowed
  EXPECT_TRUE(BuildN2GExplanation({Ex({9})}, cb.Fn(), options).ok());
  options = Options();
  options.max_train_examples = 0;
  ExpectInvalid(BuildN2GExplanation({Ex({9})}, cb.Fn(), options).status(), "max_train_examples");
  options = Options();
  options.replacement_tokens = {1, -1};
  ExpectInvalid(BuildN2GExplanation({Ex({9})}, cb.Fn(), options).status(), "replacement_tokens[1]");
  options = Options();
  options.filler_tokens = {-3};
  ExpectInvalid(BuildN2GExplanation({Ex({9})}, cb.Fn(), options).status(), "filler_tokens[0]");
  EXPECT_EQ(cb.calls, 2);  // only the valid build (two batches) reached the callback

  const N2GExplanation explanation{{P({9})}};
  ExpectInvalid(ScoreN2G(explanation, {{9}, {9}}, {{1.0}}).status(), "activations");
  ExpectInvalid(ScoreN2G(explanation, {{9}, {7, 9}}, {{1.0}, {0.0}}).status(), "activations[1]");
}

TEST(N2G, CallbackFailuresAreReported) {
  // The wrong number of values, in the pruning batch and in the checks batch.
  int call = 0;
  const LatentActivationFn short_in_checks =
      [&](const std::vector<Tokens>& contexts) -> absl::StatusOr<std::vector<double>> {
    ++call;
    std::vector<double> values(contexts.size(), 1.0);
    if (call == 2) values.pop_back();
    return values;
  };
  ExpectInvalid(BuildN2GExplanation({Ex({7, 9})}, short_in_checks, Options()).status(),
                "activation: the callback returned");
  const LatentActivationFn too_many =
      [](const std::vector<Tokens>& contexts) -> absl::StatusOr<std::vector<double>> {
    return std::vector<double>(contexts.size() + 1, 1.0);
  };
  ExpectInvalid(BuildN2GExplanation({Ex({7, 9})}, too_many, Options()).status(),
                "returned 3 values for 2 contexts");
  const LatentActivationFn not_finite =
      [](const std::vector<Tokens>& contexts) -> absl::StatusOr<std::vector<double>> {
    return std::vector<double>(contexts.size(), std::numeric_limits<double>::infinity());
  };
  ExpectInvalid(BuildN2GExplanation({Ex({7, 9})}, not_finite, Options()).status(), "non-finite");
  // A callback error is passed through unchanged.
  const LatentActivationFn failing =
      [](const std::vector<Tokens>&) -> absl::StatusOr<std::vector<double>> {
    return absl::UnavailableError("model server down");
  };
  const absl::Status status = BuildN2GExplanation({Ex({7, 9})}, failing, Options()).status();
  EXPECT_EQ(status, absl::UnavailableError("model server down"));
}

}  // namespace
}  // namespace saegrid
