#include "engine/eval/downstream_loss.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "base/status_macros.h"

namespace saegrid {
namespace {

// Sum over the scored positions of the next-token cross-entropy of `logits` [B, T, V] and of
// KL(clean || logits); `scored` [B, T - 1] bool.
struct Sums {
  double ce = 0, kl = 0;
};
// The log-softmax is float32 ([B, T, V] in float64 would be several GiB at GPT-2's vocabulary and
// a long context); the per-position values are summed in float64.
Sums ScoreLogits(const torch::Tensor& logits, const torch::Tensor& clean_log_probs, const torch::Tensor& targets,
                 const torch::Tensor& scored) {
  const int64_t t = logits.size(1);
  const auto log_probs = torch::log_softmax(logits.narrow(1, 0, t - 1).to(torch::kFloat), -1);
  const auto ce = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1);  // [B, T-1]
  const auto kl = (clean_log_probs.exp() * (clean_log_probs - log_probs)).sum(-1);
  const auto mask = scored.to(torch::kDouble);
  return {(ce.to(torch::kDouble) * mask).sum().item<double>(), (kl.to(torch::kDouble) * mask).sum().item<double>()};
}

// Replaces the activations at the kept positions with `replacement(activations)`.
HookEdit EditKept(const Hookpoint& hook, torch::Tensor kept,
                  std::function<torch::Tensor(const torch::Tensor&)> replacement) {
  return HookEdit{hook, [kept = std::move(kept), replacement = std::move(replacement)](const torch::Tensor& x) {
                    const auto mask = kept.to(x.device()).unsqueeze(-1);
                    return torch::where(mask, replacement(x), x);
                  }};
}

}  // namespace

double LossRecovered(double ce_clean, double ce_sae, double ce_floor) {
  const double range = ce_floor - ce_clean;
  if (range == 0) return std::numeric_limits<double>::quiet_NaN();
  return (ce_floor - ce_sae) / range;
}

absl::StatusOr<DownstreamLoss> MeasureDownstreamLoss(const SplicedSae& spliced, const torch::Tensor& ids,
                                                     int64_t batch) {
  torch::NoGradGuard no_grad;
  DownstreamLoss out;
  const auto all_ids = ids.to(torch::kCPU, torch::kLong);
  const int64_t n = all_ids.size(0), t = all_ids.size(1);
  out.sequences = n;
  if (n == 0 || t < 2) return absl::InvalidArgumentError("downstream_loss: needs sequences of at least 2 tokens");
  batch = std::max<int64_t>(batch, 1);
  // The mean activation over the kept positions, for mean ablation.
  torch::Tensor sum;
  int64_t count = 0;
  for (int64_t b = 0; b < n; b += batch) {
    const auto chunk = all_ids.narrow(0, b, std::min(batch, n - b));
    SAEGRID_ASSIGN_OR_RETURN(const auto acts, spliced.Activations(chunk));
    const auto kept = spliced.KeptPositions(chunk).to(acts.device());
    const auto rows = acts.index({kept}).to(torch::kDouble);
    sum = sum.defined() ? sum + rows.sum(0) : rows.sum(0);
    count += rows.size(0);
  }
  const auto mean = count > 0 ? (sum / count).to(torch::kFloat) : torch::Tensor();
  Sums clean, sae, zero, mean_ablated;
  for (int64_t b = 0; b < n; b += batch) {
    const auto chunk = all_ids.narrow(0, b, std::min(batch, n - b));
    const auto kept = spliced.KeptPositions(chunk);
    SAEGRID_ASSIGN_OR_RETURN(const auto clean_logits, spliced.Logits(chunk));
    const auto targets = chunk.narrow(1, 1, t - 1).to(clean_logits.device());
    const auto scored = kept.narrow(1, 0, t - 1).to(clean_logits.device());
    const auto clean_log_probs = torch::log_softmax(clean_logits.narrow(1, 0, t - 1).to(torch::kFloat), -1);
    auto add = [](Sums* total, const Sums& s) {
      total->ce += s.ce;
      total->kl += s.kl;
    };
    add(&clean, ScoreLogits(clean_logits, clean_log_probs, targets, scored));
    const HookEdit edits[] = {
        EditKept(spliced.hook(), kept, [&](const torch::Tensor& x) { return spliced.Reconstruct(x); }),
        EditKept(spliced.hook(), kept, [](const torch::Tensor& x) { return torch::zeros_like(x); }),
        EditKept(spliced.hook(), kept, [&](const torch::Tensor& x) { return mean.to(x.device()).expand_as(x); }),
    };
    Sums* totals[] = {&sae, &zero, &mean_ablated};
    for (int i = 0; i < 3; ++i) {
      if (i == 2 && !mean.defined()) continue;
      SAEGRID_ASSIGN_OR_RETURN(const auto logits, spliced.Logits(chunk, &edits[i]));
      add(totals[i], ScoreLogits(logits, clean_log_probs, targets, scored));
    }
    out.positions += scored.sum().item<int64_t>();
  }
  if (out.positions == 0) {
    return absl::InvalidArgumentError("downstream_loss: every position is excluded (data.language_model.exclude_token_ids)");
  }
  const double p = static_cast<double>(out.positions);
  out.ce_clean = clean.ce / p;
  out.ce_sae = sae.ce / p;
  out.ce_zero_ablation = zero.ce / p;
  out.ce_mean_ablation = mean_ablated.ce / p;
  out.kl_sae = sae.kl / p;
  out.kl_zero_ablation = zero.kl / p;
  out.loss_recovered = LossRecovered(out.ce_clean, out.ce_sae, out.ce_zero_ablation);
  out.loss_recovered_mean_ablation = LossRecovered(out.ce_clean, out.ce_sae, out.ce_mean_ablation);
  return out;
}

}  // namespace saegrid
