#include "engine/eval/n2g.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace saegrid {
namespace {

// One callback call, with its contract checked.
absl::StatusOr<std::vector<double>> Evaluate(const LatentActivationFn& activation,
                                             const std::vector<std::vector<int64_t>>& contexts) {
  if (contexts.empty()) return std::vector<double>();
  SAEGRID_ASSIGN_OR_RETURN(std::vector<double> values, activation(contexts));
  if (values.size() != contexts.size()) {
    return absl::InvalidArgumentError(absl::StrCat("activation: the callback returned ", values.size(),
                                                   " values for ", contexts.size(), " contexts"));
  }
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("activation: the callback returned a non-finite value (", values[i],
                       ") for context ", i));
    }
  }
  return values;
}

absl::Status CheckTokens(const std::vector<int64_t>& tokens, const std::string& name) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "[", i, "] is ", tokens[i], "; token ids must be >= 0"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckInputs(const std::vector<N2GExample>& examples, size_t used,
                         const N2GOptions& options) {
  if (!(options.keep_fraction > 0 && options.keep_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("keep_fraction is ", options.keep_fraction, "; it must be in (0, 1]"));
  }
  if (options.max_train_examples <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_train_examples is ",
                                                   options.max_train_examples, "; it must be > 0"));
  }
  SAEGRID_RETURN_IF_ERROR(CheckTokens(options.replacement_tokens, "replacement_tokens"));
  SAEGRID_RETURN_IF_ERROR(CheckTokens(options.filler_tokens, "filler_tokens"));
  for (size_t e = 0; e < used; ++e) {
    const N2GExample& example = examples[e];
    if (example.context.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("examples[", e, "].context is empty"));
    }
    SAEGRID_RETURN_IF_ERROR(CheckTokens(example.context, absl::StrCat("examples[", e, "].context")));
    if (!(std::isfinite(example.activation) && example.activation > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("examples[", e, "].activation is ",
                                                     example.activation,
                                                     "; an activating example's must be > 0"));
    }
  }
  return absl::OkStatus();
}

// What the wildcard and position checks of one example ask the callback.
struct Probe {
  int64_t position;  // the replaced position, or -1 for the position (filler) check
};

}  // namespace

bool N2GPattern::Matches(const std::vector<int64_t>& sequence, int64_t position) const {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0 || position < 0 || position >= static_cast<int64_t>(sequence.size())) return false;
  const int64_t start = position - n + 1;
  if (start < 0 || (anchored && start != 0)) return false;
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] != kWildcard && tokens[i] != sequence[start + i]) return false;
  }
  return true;
}

bool N2GExplanation::Matches(const std::vector<int64_t>& sequence, int64_t position) const {
  for (const N2GPattern& pattern : patterns) {
    if (pattern.Matches(sequence, position)) return true;
  }
  return false;
}

absl::StatusOr<N2GExplanation> BuildN2GExplanation(const std::vector<N2GExample>& examples,
                                                   const LatentActivationFn& activation,
                                                   const N2GOptions& options) {
  const size_t used =
      options.max_train_examples > 0
          ? std::min(examples.size(), static_cast<size_t>(options.max_train_examples))
          : 0;
  SAEGRID_RETURN_IF_ERROR(CheckInputs(examples, used, options));
  const double keep = options.keep_fraction;

  // 1. Pruning: every suffix of every example in one batch, suffix length 1..n in order.
  std::vector<std::vector<int64_t>> contexts;
  for (size_t e = 0; e < used; ++e) {
    const std::vector<int64_t>& context = examples[e].context;
    for (size_t length = 1; length <= context.size(); ++length) {
      contexts.emplace_back(context.end() - length, context.end());
    }
  }
  SAEGRID_ASSIGN_OR_RETURN(std::vector<double> suffix_values, Evaluate(activation, contexts));

  std::vector<std::vector<int64_t>> pruned(used);
  std::vector<double> reference(used);
  size_t offset = 0;
  for (size_t e = 0; e < used; ++e) {
    const std::vector<int64_t>& context = examples[e].context;
    const size_t n = context.size();
    size_t chosen = n;  // the fallback: the full context
    for (size_t length = 1; length <= n; ++length) {
      if (suffix_values[offset + length - 1] >= keep * examples[e].activation) {
        chosen = length;
        break;
      }
    }
    pruned[e].assign(context.end() - chosen, context.end());
    reference[e] = suffix_values[offset + chosen - 1];
    offset += n;
  }

  // 2 and 3. The wildcard probes (one per position and different replacement token) and the
  // position probe of every example, in one batch.
  contexts.clear();
  std::vector<std::vector<Probe>> probes(used);
  for (size_t e = 0; e < used; ++e) {
    if (reference[e] <= 0) continue;  // kept literally, see the header
    const std::vector<int64_t>& suffix = pruned[e];
    for (size_t p = 0; p + 1 < suffix.size(); ++p) {
      for (int64_t replacement : options.replacement_tokens) {
        if (replacement == suffix[p]) continue;
        contexts.push_back(suffix);
        contexts.back()[p] = replacement;
        probes[e].push_back({static_cast<int64_t>(p)});
      }
    }
    if (!options.filler_tokens.empty()) {
      std::vector<int64_t> preceded = options.filler_tokens;
      preceded.insert(preceded.end(), suffix.begin(), suffix.end());
      contexts.push_back(std::move(preceded));
      probes[e].push_back({-1});
    }
  }
  SAEGRID_ASSIGN_OR_RETURN(std::vector<double> probe_values, Evaluate(activation, contexts));

  N2GExplanation explanation;
  offset = 0;
  for (size_t e = 0; e < used; ++e) {
    N2GPattern pattern;
    pattern.tokens = pruned[e];
    if (reference[e] <= 0) {
      pattern.anchored = true;
    } else {
      const double bar = keep * reference[e];
      // Per position: whether some replacement was tried, and whether all kept the activation.
      std::vector<char> tried(pattern.tokens.size(), 0), kept(pattern.tokens.size(), 1);
      for (const Probe& probe : probes[e]) {
        const double value = probe_values[offset++];
        if (probe.position < 0) {
          pattern.anchored = value < bar;
        } else {
          tried[probe.position] = 1;
          if (value < bar) kept[probe.position] = 0;
        }
      }
      for (size_t p = 0; p + 1 < pattern.tokens.size(); ++p) {
        if (tried[p] && kept[p]) pattern.tokens[p] = kWildcard;
      }
      if (!pattern.anchored) {
        const auto first = std::find_if(pattern.tokens.begin(), pattern.tokens.end(),
                                         [](int64_t t) { return t != kWildcard; });
        pattern.tokens.erase(pattern.tokens.begin(), first);
      }
    }
    if (std::find(explanation.patterns.begin(), explanation.patterns.end(), pattern) ==
        explanation.patterns.end()) {
      explanation.patterns.push_back(std::move(pattern));
    }
  }
  return explanation;
}

N2GScore MakeN2GScore(int64_t true_positives, int64_t false_positives, int64_t false_negatives) {
  N2GScore score;
  score.true_positives = true_positives;
  score.false_positives = false_positives;
  score.false_negatives = false_negatives;
  const int64_t predicted = true_positives + false_positives;
  const int64_t firing = true_positives + false_negatives;
  score.precision = predicted > 0 ? static_cast<double>(true_positives) / predicted : 1.0;
  score.recall = firing > 0 ? static_cast<double>(true_positives) / firing : 1.0;
  const double sum = score.precision + score.recall;
  score.f1 = sum > 0 ? 2 * score.precision * score.recall / sum : 0.0;
  return score;
}

absl::StatusOr<N2GScore> ScoreN2G(const N2GExplanation& explanation,
                                  const std::vector<std::vector<int64_t>>& sequences,
                                  const std::vector<std::vector<double>>& activations,
                                  double firing_threshold) {
  if (sequences.size() != activations.size()) {
    return absl::InvalidArgumentError(absl::StrCat("activations has ", activations.size(),
                                                   " sequences; sequences has ", sequences.size()));
  }
  int64_t tp = 0, fp = 0, fn = 0;
  for (size_t i = 0; i < sequences.size(); ++i) {
    if (sequences[i].size() != activations[i].size()) {
      return absl::InvalidArgumentError(absl::StrCat("activations[", i, "] has ",
                                                     activations[i].size(), " values; sequences[",
                                                     i, "] has ", sequences[i].size(), " tokens"));
    }
    for (size_t t = 0; t < sequences[i].size(); ++t) {
      const bool fires = activations[i][t] > firing_threshold;
      const bool predicted = explanation.Matches(sequences[i], static_cast<int64_t>(t));
      if (predicted && fires) ++tp;
      if (predicted && !fires) ++fp;
      if (!predicted && fires) ++fn;
    }
  }
  return MakeN2GScore(tp, fp, fn);
}

std::string N2GPatternToString(const N2GPattern& pattern, const TokenTextFn& token_text) {
  std::string text = pattern.anchored ? "^" : "";
  bool first = !pattern.anchored;
  for (int64_t token : pattern.tokens) {
    if (!first) text += ' ';
    first = false;
    if (token == kWildcard) {
      text += '*';
    } else {
      text += token_text ? token_text(token) : absl::StrCat(token);
    }
  }
  return text;
}

}  // namespace saegrid
