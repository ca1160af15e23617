// N2G ("neuron to graph") explanations of one SAE latent, as used by Gao et al. 2024, "Scaling and
// evaluating sparse autoencoders", section 4.3: a latent is explained by a few n-gram patterns over
// token ids, with wildcards, built from its activating examples by pruning, wildcard and position
// checks, and scored by how well "some pattern matches here" predicts "the latent fires here".
//
// The algorithm is independent of any model: the language model and the SAE are behind a
// callback giving the latent's activation at the last token of each context.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace saegrid {

// A pattern token that matches any token. Token ids are otherwise >= 0.
inline constexpr int64_t kWildcard = -1;

// Activations of one latent at the LAST token of each context. A context is a token-id sequence
// that starts at the sequence start (position 0), so the model sees exactly those tokens. Batched
// so the caller can run one forward pass for many contexts; the batch may be large (all suffixes
// of all examples) and of mixed lengths, so the callback should chunk it if it must. It must
// return exactly one finite value per context, in order.
using LatentActivationFn = std::function<absl::StatusOr<std::vector<double>>(
    const std::vector<std::vector<int64_t>>& contexts)>;

// An n-gram ending at the predicted token: tokens[size - 1] is that token (never a wildcard in
// patterns built here), kWildcard entries match any token.
struct N2GPattern {
  std::vector<int64_t> tokens;
  // Matches only when the pattern starts at position 0 of the sequence.
  bool anchored = false;

  // True iff the pattern matches tokens[position - size + 1 .. position] (with position - size +
  // 1 == 0 when anchored). False for an empty pattern or a position outside `tokens`.
  bool Matches(const std::vector<int64_t>& sequence, int64_t position) const;
  bool operator==(const N2GPattern& other) const {
    return anchored == other.anchored && tokens == other.tokens;
  }
};

// The explanation predicts that the latent fires at a position iff some pattern matches there.
// An empty explanation predicts nothing.
struct N2GExplanation {
  std::vector<N2GPattern> patterns;  // distinct, in the order of the examples that gave them

  bool Matches(const std::vector<int64_t>& sequence, int64_t position) const;
};

// An activating example: the context from the sequence start up to and including the activating
// token, and the latent's activation there (must be > 0).
struct N2GExample {
  std::vector<int64_t> context;
  double activation = 0;
};

struct N2GOptions {
  // A modification "keeps" the activation when it stays >= keep_fraction of the reference. In
  // (0, 1].
  double keep_fraction = 0.5;
  // Only the first max_train_examples examples are used (the caller orders them, e.g. by
  // activation, and keeps the others for scoring). > 0.
  int64_t max_train_examples = 16;
  // Tokens substituted at each position for the wildcard check (e.g. a few common tokens). Empty:
  // no wildcards.
  std::vector<int64_t> replacement_tokens;
  // Tokens put before a pruned suffix for the position check (e.g. a few common tokens). Empty: no
  // pattern is anchored.
  std::vector<int64_t> filler_tokens;
};

// Builds the explanation from the first options.max_train_examples examples with two callback
// calls in all (one batch per phase, covering every example). For each example:
//  1. Pruning: the shortest suffix of the context (ending at the activating token) whose
//     activation is >= keep_fraction * example.activation; all suffix lengths, the full context
//     included, are evaluated and the shortest that passes is taken (shorter suffixes need not
//     pass for longer ones to). If none passes, the full context is used.
//     The reference activation `a` of the example is then the callback's value at that suffix.
//  2. Wildcards: each position except the last becomes kWildcard iff replacing its token with each
//     replacement token different from it keeps the activation >= keep_fraction * a (each position
//     is tested alone; there must be at least one different replacement token).
//  3. Position: if the suffix preceded by filler_tokens gives an activation < keep_fraction * a,
//     the pattern is anchored (it only matches at the sequence start).
//  If a <= 0 (only possible after the fallback of step 1: the callback disagrees with
//  example.activation), steps 2 and 3 cannot be judged and the full context is kept literally,
//  anchored, without wildcards.
//  Leading wildcards of an unanchored pattern are dropped (they carry no information; an anchored
//  pattern keeps them, as they fix its offset from the sequence start). Identical patterns are
//  kept once. No examples: an empty explanation, and no callback call.
// Errors (InvalidArgument, naming the argument): an empty context, a negative token id in a
// context, replacement_tokens or filler_tokens, an example activation that is not finite and > 0,
// keep_fraction outside (0, 1], max_train_examples <= 0, a callback returning a number of values
// different from the number of contexts or a non-finite value. A callback error is returned as is.
absl::StatusOr<N2GExplanation> BuildN2GExplanation(const std::vector<N2GExample>& examples,
                                                   const LatentActivationFn& activation,
                                                   const N2GOptions& options = {});

// Position counts over every position of the scored sequences, and the derived rates.
// Zero denominators (the values keep a plain mean finite, but such a mean is biased; see below):
//  - precision = 1 when nothing is predicted (TP + FP == 0): no prediction was wrong;
//  - recall = 1 when nothing fires (TP + FN == 0): no firing was missed;
//  - f1 = 2 * precision * recall / (precision + recall), and 0 when precision + recall == 0
//    (so f1 = 1 when nothing fires and nothing is predicted).
// To average over latents, average precision over the latents with precision_defined() and
// recall over those with recall_defined() (f1 over those with both), and report how many latents
// each mean covers. Or pool the counts of several sets (e.g. held-out activating sequences and
// random text) with MakeN2GScore(a.tp + b.tp, ...).
struct N2GScore {
  int64_t true_positives = 0;
  int64_t false_positives = 0;
  int64_t false_negatives = 0;
  double precision = 1;
  double recall = 1;
  double f1 = 1;

  bool precision_defined() const { return true_positives + false_positives > 0; }
  bool recall_defined() const { return true_positives + false_negatives > 0; }
};

// The score of these counts (all >= 0), with the conventions above.
N2GScore MakeN2GScore(int64_t true_positives, int64_t false_positives, int64_t false_negatives);

// Scores the explanation at every position of every sequence: the position truly fires iff
// activations[i][t] > firing_threshold (a NaN activation does not fire), and is predicted iff
// explanation.Matches(sequences[i], t). Each sequence starts at its sequence start (anchored
// patterns match at its position 0). Pass the held-out activating sequences and random
// (mostly non-activating) text, together or in separate calls.
// Errors (InvalidArgument): sequences.size() != activations.size(), or sequences[i].size() !=
// activations[i].size().
absl::StatusOr<N2GScore> ScoreN2G(const N2GExplanation& explanation,
                                  const std::vector<std::vector<int64_t>>& sequences,
                                  const std::vector<std::vector<double>>& activations,
                                  double firing_threshold = 0);

// Text of a token id (e.g. the tokenizer's decoding).
using TokenTextFn = std::function<std::string(int64_t token)>;

// A pattern as text for humans and JSON: its elements joined by single spaces, "^" first for an
// anchored pattern, "*" for a wildcard, token_text(id) for a token (the decimal id when
// token_text is null). E.g. "the * cat", "^ the * cat", "7 * 9". A token whose text is "*" or "^",
// or contains spaces, reads ambiguously; the caller can quote in token_text.
std::string N2GPatternToString(const N2GPattern& pattern, const TokenTextFn& token_text = nullptr);

}  // namespace saegrid
