#include "engine/evaluation.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/eval/suite.h"

namespace saegrid {

std::pair<double, double> FeatureRecovery(const torch::Tensor& decoder_rows,
                                          const torch::Tensor& features, double bar) {
  torch::NoGradGuard no_grad;
  const auto dec = decoder_rows.to(torch::kFloat);
  const auto f = features.to(torch::kFloat);
  const auto cos = (f / f.norm(2, 1, true).clamp_min(1e-12))
                       .mm((dec / dec.norm(2, 1, true).clamp_min(1e-12)).t());
  const auto best = std::get<0>(cos.max(1));
  return {best.mean().item<double>(), (best >= bar).to(torch::kFloat).mean().item<double>()};
}

EvalResult Evaluate(const SaeModel& model, const SaeParameters& weights, const torch::Tensor& inputs,
                    const torch::Tensor& ground_truth, double dead_fraction, double recovery_cosine) {
  torch::NoGradGuard no_grad;
  EvalResult r;
  const int64_t n = model.config().num_latents;
  const int64_t d = model.config().d_in;
  r.tokens = inputs.size(0);
  r.num_latents = n;
  r.dead_fraction = dead_fraction;
  r.recovery_cosine = recovery_cosine;
  // Sums stay on the inputs' device; the figures are read once at the end.
  const auto sums = inputs.options().dtype(torch::kDouble);
  auto counts = torch::zeros({n}, sums);
  auto sq_err_sum = torch::zeros({}, sums);
  double sq_err = 0, active = 0;
  auto sum = torch::zeros({d}, sums);
  auto sum_sq = torch::zeros({}, sums);
  constexpr int64_t kChunk = 4096;
  for (int64_t begin = 0; begin < r.tokens; begin += kChunk) {
    const auto x = model.NormalizeInputs(inputs.narrow(0, begin, std::min(kChunk, r.tokens - begin)));
    const Selection s = model.Encode(x, weights);
    const auto x_hat = model.Decode(s, weights);
    sq_err_sum += (x - x_hat).to(torch::kDouble).pow(2).sum();
    const auto xd = x.to(torch::kDouble);
    sum += xd.sum(0);
    sum_sq += xd.pow(2).sum();
    counts.index_add_(0, s.indices.reshape(-1), (s.values > 0).reshape(-1).to(torch::kDouble));
  }
  sq_err = sq_err_sum.item<double>();
  active = counts.sum().item<double>();
  if (r.tokens > 0) {
    const double total_variance = (sum_sq - sum.pow(2).sum() / r.tokens).item<double>();
    r.fvu = sq_err / std::max(total_variance, 1e-30);
    r.mse = sq_err / static_cast<double>(r.tokens * d);
    r.l0 = active / r.tokens;
  }
  const auto density = counts / std::max<int64_t>(r.tokens, 1);
  r.log10_density = (density + 1e-10).log10().to(torch::kFloat).to(torch::kCPU);
  r.never_fired = (counts == 0).sum().item<int64_t>();
  r.never_fired_fraction = static_cast<double>(r.never_fired) / n;
  const int bins = static_cast<int>(std::lround(-r.histogram_low / r.histogram_step));
  r.density_histogram.assign(bins, 0);
  const auto dens = density.to(torch::kCPU).contiguous();
  const double* dp = dens.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    if (dp[i] <= 0) continue;
    const int bin = static_cast<int>(std::floor((std::log10(dp[i]) - r.histogram_low) / r.histogram_step));
    r.density_histogram[std::clamp(bin, 0, bins - 1)]++;
  }
  const int64_t top = std::min(d, n);
  const double mean_top = std::get<0>(density.topk(top)).mean().item<double>();
  r.densest_latents_mean_density = mean_top;
  r.densest_latents_ratio = r.l0 > 0 ? mean_top / r.l0 : 0;
  if (ground_truth.defined()) {
    r.has_ground_truth = true;
    r.num_true_features = ground_truth.size(0);
    std::tie(r.mmcs, r.recovered_fraction) = FeatureRecovery(weights.w_dec, ground_truth.to(weights.w_dec.device()), recovery_cosine);
  }
  return r;
}

nlohmann::json EvalResultToJson(const EvalResult& r) {
  nlohmann::json j = {
      {"split", r.split},
      {"tokens", r.tokens},
      {"num_latents", r.num_latents},
      {"fvu", r.fvu},
      {"mse", r.mse},
      {"l0", r.l0},
      {"dead_fraction", r.dead_fraction},
      {"never_fired_fraction", r.never_fired_fraction},
      {"density_histogram", {{"log10_low", r.histogram_low}, {"log10_step", r.histogram_step},
                             {"counts", r.density_histogram}, {"never_fired", r.never_fired}}},
      {"densest_latents_mean_density", r.densest_latents_mean_density},
      {"densest_latents_ratio", r.densest_latents_ratio},
  };
  if (r.shards > 1) {
    j["sharding"] = {{"shards", r.shards},
                     {"candidates_per_shard", r.candidates_per_shard},
                     {"training_overflow_tokens", r.training_overflow_tokens},
                     {"training_overflow_rate", r.training_overflow_rate},
                     {"training_truncated_tokens", r.training_truncated_tokens},
                     {"training_truncated_rate", r.training_truncated_rate},
                     {"eval_overflow_rate", r.eval_overflow_rate},
                     {"eval_truncated_rate", r.eval_truncated_rate}};
  }
  if (r.has_ground_truth) {
    j["ground_truth"] = {{"num_features", r.num_true_features},
                         {"mmcs", r.mmcs},
                         {"recovery_cosine", r.recovery_cosine},
                         {"recovered_fraction", r.recovered_fraction}};
  }
  if (r.evaluations) j["evaluations"] = SuiteReportToJson(*r.evaluations);
  return j;
}

std::string FormatEvalTable(const EvalResult& r) {
  std::string s = absl::StrFormat(
      "  %-30s %12s\n  %-30s %12d\n  %-30s %12.5f\n  %-30s %12.6g\n  %-30s %12.2f\n  %-30s %11.2f%%\n"
      "  %-30s %11.2f%%\n  %-30s %12.4g\n",
      "evaluation split", r.split, "evaluation tokens", r.tokens, "FVU", r.fvu, "MSE", r.mse, "L0", r.l0, "dead (training)",
      100 * r.dead_fraction, "never fired (eval)", 100 * r.never_fired_fraction,
      "densest-latents ratio", r.densest_latents_ratio);
  if (r.has_ground_truth) {
    absl::StrAppend(&s, absl::StrFormat("  %-30s %12.4f\n  %-30s %11.2f%%\n", "MMCS", r.mmcs,
                                        absl::StrFormat("recovered (cos >= %.2f)", r.recovery_cosine),
                                        100 * r.recovered_fraction));
  }
  if (r.shards > 1) {
    absl::StrAppend(&s, absl::StrFormat(
        "  %-30s %12s\n  %-30s %11.3f%%\n  %-30s %11.3f%%\n  %-30s %11.3f%%\n  %-30s %11.3f%%\n",
        "shards x candidates", absl::StrFormat("%d x %d", r.shards, r.candidates_per_shard),
        "possibly truncated (training)", 100 * r.training_overflow_rate, "truncated (training)",
        100 * r.training_truncated_rate, "possibly truncated (eval)", 100 * r.eval_overflow_rate,
        "truncated (eval)", 100 * r.eval_truncated_rate));
  }
  absl::StrAppend(&s, "  log10 density histogram:");
  for (size_t b = 0; b < r.density_histogram.size(); ++b) {
    if (r.density_histogram[b] == 0) continue;
    absl::StrAppend(&s, absl::StrFormat(" [%.1f,%.1f):%d", r.histogram_low + b * r.histogram_step,
                                        r.histogram_low + (b + 1) * r.histogram_step,
                                        r.density_histogram[b]));
  }
  absl::StrAppend(&s, absl::StrFormat(" never:%d\n", r.never_fired));
  return s;
}

}  // namespace saegrid
