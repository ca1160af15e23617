#include "engine/eval/suite.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/checkpoint.h"
#include "engine/data/activation_shard.h"
#include "engine/data/activation_source.h"
#include "engine/data/language_model_source.h"
#include "engine/data/synthetic.h"
#include "engine/eval/decoder_comparison.h"
#include "engine/eval/latent_firings.h"
#include "engine/eval/n2g_latents.h"
#include "engine/eval/probes.h"
#include "engine/eval/shrinkage.h"
#include "engine/eval/spliced_sae.h"
#include "engine/npy.h"

namespace saegrid {
namespace {

// Latent pre-activations are offered to the probes this many latents at a time.
constexpr int64_t kProbeLatentBlock = 4096;
// Shrinkage refines at most this many held-out rows.
constexpr int64_t kShrinkageMaxRows = 8192;

absl::Status Named(const std::string& name, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(name, ": ", status.message()));
}

// What the model-based evaluations share: the model, the spliced SAE, the held-out sequences and
// (made once, when a latent-level evaluation asks) where the latents fire on them.
struct ModelContext {
  LanguageModelData data;
  std::unique_ptr<SplicedSae> spliced;
  torch::Tensor ids;  // [S, T]
  int64_t first_sequence = 0;
  std::optional<LatentFirings> firings;
};

absl::StatusOr<ModelContext> OpenModelContext(const SuiteInputs& in, std::string* split) {
  const TrainConfig& c = *in.config;
  ModelContext m;
  SAEGRID_ASSIGN_OR_RETURN(m.data, OpenLanguageModelData(c.data.language_model, in.device));
  if (m.data.model->d_model() != in.model.d_in) {
    return absl::InvalidArgumentError(absl::StrCat("the model's ", m.data.hook.name, " has width ",
                                                   m.data.model->d_model(), " but the SAE reads ", in.model.d_in));
  }
  const int64_t n = m.data.tokens->num_sequences();
  SequenceRange range = HeldOutSequences(n, c.data.eval_fraction);
  if (range.count == 0) {
    range = {0, n};  // no held-out sequences: the training data, said so in the report
    *split = "training_sample";
  }
  m.first_sequence = range.first;
  const int64_t count = std::min(range.count, c.evaluation.language_model.sequences);
  SAEGRID_ASSIGN_OR_RETURN(m.ids, m.data.tokens->Read(range.first, count));
  m.spliced = std::make_unique<SplicedSae>(*m.data.model, m.data.hook, in.model, *in.params,
                                           c.data.language_model.exclude_token_ids, in.device);
  return m;
}

absl::StatusOr<const LatentFirings*> Firings(ModelContext& m, int64_t batch) {
  if (!m.firings) {
    SAEGRID_ASSIGN_OR_RETURN(auto f, CollectLatentFirings(*m.spliced, m.ids, batch));
    m.firings = std::move(f);
  }
  return &*m.firings;
}

// The labelled set of the probes: rows [N, d] and labels [N, T] with the tasks' names.
struct LabelledSet {
  torch::Tensor rows, labels;
  std::vector<std::string> names;
};

absl::StatusOr<LabelledSet> SyntheticLabelledSet(const TrainConfig& c) {
  // Fresh samples of the training distribution (same features and covariance), labelled with the
  // features active in each; the tasks are the most frequent features.
  SyntheticDataConfig config = c.data.synthetic;
  config.num_samples = std::min(config.num_samples, c.evaluation.probes.max_rows);
  SyntheticOptions options;
  options.keep_active = true;
  options.fresh_samples_stream = 1;
  const SyntheticData data = GenerateSyntheticData(config, options);
  const auto frequency = data.active.sum(0);
  const int64_t tasks = std::min<int64_t>(c.evaluation.probes.max_tasks, config.num_features);
  const auto top = std::get<1>(frequency.topk(tasks));
  LabelledSet set;
  set.rows = data.samples;
  set.labels = data.active.index_select(1, top).to(torch::kFloat);
  for (int64_t i = 0; i < tasks; ++i) set.names.push_back(absl::StrCat("feature_", top[i].item<int64_t>()));
  return set;
}

absl::StatusOr<LabelledSet> FileLabelledSet(const TrainConfig& c) {
  const ProbeEvalConfig& p = c.evaluation.probes;
  const std::string rows_path = p.activations_path.empty() ? c.data.path : p.activations_path;
  if (rows_path.empty()) {
    return absl::InvalidArgumentError("evaluation.probes.activations_path: required when data.path is not set");
  }
  auto npy = OpenNpy(p.labels_path);
  if (!npy.ok()) return absl::InvalidArgumentError(absl::StrCat("evaluation.probes.labels_path: ", npy.status().message()));
  if (npy->shape.empty() || npy->shape.size() > 2) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation.probes.labels_path ", p.labels_path,
                                                   ": labels must be [N] or [N, T]"));
  }
  auto type = NpyDescrToScalarType(npy->descr);
  if (!type.ok()) return absl::InvalidArgumentError(absl::StrCat("evaluation.probes.labels_path ", p.labels_path, ": ", type.status().message()));
  std::vector<int64_t> shape = npy->shape;
  if (shape.size() == 1) shape.push_back(1);
  const auto labels_all = torch::from_blob(const_cast<uint8_t*>(npy->data()), shape, *type).to(torch::kFloat);
  if (shape[0] == 0) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation.probes.labels_path ", p.labels_path, ": no rows"));
  }
  SAEGRID_ASSIGN_OR_RETURN(const auto paths, ListShardPaths(rows_path));
  std::vector<std::shared_ptr<ActivationShard>> shards;
  int64_t total = 0;
  for (const auto& path : paths) {
    SAEGRID_ASSIGN_OR_RETURN(auto shard, ActivationShard::Open(path.path, path.tokens_path, c.data.dtype_override));
    total += shard->rows();
    shards.push_back(std::move(shard));
  }
  // Row for row: a labels file of another length describes other rows.
  if (total != shape[0]) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation.probes.labels_path ", p.labels_path, ": ", shape[0],
                                                   " labelled rows but ", rows_path, " has ", total));
  }
  std::vector<torch::Tensor> parts;
  int64_t have = 0;
  const int64_t want = std::min(p.max_rows, shape[0]);
  for (const auto& shard : shards) {
    if (have >= want) break;
    const int64_t take = std::min(shard->rows(), want - have);
    auto rows = torch::empty({take, shard->d()}, torch::kFloat);
    SAEGRID_RETURN_IF_ERROR(shard->CopyRows(0, take, rows.data_ptr<float>()));
    parts.push_back(rows);
    have += take;
  }
  LabelledSet set;
  set.rows = torch::cat(parts);
  set.labels = labels_all.narrow(0, 0, want).clone();
  const auto valid = set.labels.eq(0).logical_or(set.labels.eq(1)).all().item<bool>();
  if (!valid) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation.probes.labels_path ", p.labels_path,
                                                   ": labels must be 0 or 1"));
  }
  const int64_t tasks = std::min<int64_t>(shape[1], p.max_tasks);
  set.labels = set.labels.narrow(1, 0, tasks).contiguous();
  if (!p.task_names.empty() && static_cast<int64_t>(p.task_names.size()) != shape[1]) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation.probes.task_names: ", p.task_names.size(),
                                                   " names for ", shape[1], " label columns"));
  }
  for (int64_t i = 0; i < tasks; ++i) {
    set.names.push_back(p.task_names.empty() ? absl::StrCat("task_", i) : p.task_names[i]);
  }
  return set;
}

absl::StatusOr<ProbeSummary> RunProbes(const SuiteInputs& in) {
  const TrainConfig& c = *in.config;
  SAEGRID_ASSIGN_OR_RETURN(LabelledSet set, c.data.use_synthetic ? SyntheticLabelledSet(c) : FileLabelledSet(c));
  // A task with one class in the rows read has no probe to fit: reported apart.
  ProbeSummary out;
  const auto positives = set.labels.sum(0);
  std::vector<int64_t> fit;
  std::vector<std::string> fit_names;
  for (size_t t = 0; t < set.names.size(); ++t) {
    const double n_pos = positives[static_cast<int64_t>(t)].item<double>();
    if (n_pos == 0 || n_pos == set.labels.size(0)) {
      out.constant_tasks.push_back(set.names[t]);
    } else {
      fit.push_back(static_cast<int64_t>(t));
      fit_names.push_back(set.names[t]);
    }
  }
  if (fit.empty()) return absl::InvalidArgumentError("every task has a single class in the rows read");
  set.labels = set.labels.index_select(1, torch::tensor(fit, torch::kLong));
  set.names = fit_names;
  if (set.rows.size(1) != in.model.d_in) {
    return absl::InvalidArgumentError(absl::StrCat("the labelled rows have width ", set.rows.size(1), " but the SAE reads ",
                                                   in.model.d_in));
  }
  SAEGRID_ASSIGN_OR_RETURN(auto latents, BestProbeTracker::Create(set.labels));
  SAEGRID_ASSIGN_OR_RETURN(auto channels, BestProbeTracker::Create(set.labels));
  SAEGRID_RETURN_IF_ERROR(channels.Offer(set.rows, 0));
  const SaeModel sae = SaeModel::ForInference(in.model);
  const auto x = sae.NormalizeInputs(set.rows.to(in.device)) - in.params->b_pre;
  const int64_t n = in.params->w_enc.size(0);
  for (int64_t begin = 0; begin < n; begin += kProbeLatentBlock) {
    const int64_t count = std::min(kProbeLatentBlock, n - begin);
    const auto pre = torch::addmm(in.params->b_enc.narrow(0, begin, count), x,
                                  in.params->w_enc.narrow(0, begin, count).t());
    SAEGRID_RETURN_IF_ERROR(latents.Offer(pre, begin));
    if (in.progress) in.progress("probes", static_cast<double>(begin + count) / n);
  }
  out.rows = set.rows.size(0);
  const auto prior = latents.prior_loss();
  const auto positive = set.labels.mean(0);
  for (size_t t = 0; t < set.names.size(); ++t) {
    ProbeSummary::Task task;
    task.name = set.names[t];
    task.positive_fraction = positive[t].item<double>();
    task.prior_loss = prior[t];
    task.best_latent = latents.best()[t].column;
    task.latent_loss = latents.best()[t].loss;
    task.best_channel = channels.best()[t].column;
    task.channel_loss = channels.best()[t].loss;
    out.mean_latent_loss += task.latent_loss / set.names.size();
    out.mean_channel_loss += task.channel_loss / set.names.size();
    out.mean_prior_loss += task.prior_loss / set.names.size();
    out.tasks.push_back(std::move(task));
  }
  return out;
}

absl::StatusOr<torch::Tensor> HeldOutRows(const SuiteInputs& in, std::string* split) {
  if (in.eval_rows.defined()) {
    if (in.eval_rows_split != "held_out") *split = in.eval_rows_split;
    return in.eval_rows;
  }
  const TrainConfig& c = *in.config;
  SAEGRID_ASSIGN_OR_RETURN(auto source, OpenActivationSource(c.data, 0, 1, false, in.device));
  SAEGRID_ASSIGN_OR_RETURN(auto held_out, source->EvalSplit(std::min(c.data.eval_max_tokens, kShrinkageMaxRows)));
  if (held_out.x.size(0) > 0) return held_out.x;
  *split = "training_sample";
  return source->LocalSample(std::min(c.data.eval_max_tokens, kShrinkageMaxRows));
}

absl::StatusOr<ShrinkageSummary> RunShrinkage(const SuiteInputs& in, std::string* split) {
  SAEGRID_ASSIGN_OR_RETURN(auto rows, HeldOutRows(in, split));
  rows = rows.narrow(0, 0, std::min(rows.size(0), kShrinkageMaxRows)).to(in.device);
  const SaeModel sae = SaeModel::ForInference(in.model);
  const auto x = sae.NormalizeInputs(rows);
  const Selection code = sae.Encode(x, *in.params);
  SAEGRID_ASSIGN_OR_RETURN(const auto r, RefineActivations(x, code.indices, code.values, in.params->w_dec,
                                                           in.params->b_pre, in.config->evaluation.shrinkage_iterations));
  ShrinkageSummary out;
  out.tokens = r.tokens;
  out.iterations = r.iterations;
  out.mean_ratio = r.mean_ratio;
  out.fvu_before = r.fvu_before;
  out.fvu_after = r.fvu_after;
  return out;
}

absl::StatusOr<ComparisonSummary> RunComparison(const SuiteInputs& in) {
  const EvaluationConfig& e = in.config->evaluation;
  auto other = LoadPublishedSae(e.compare_checkpoint);
  if (!other.ok()) return Named("evaluation.compare_checkpoint", other.status());
  SAEGRID_ASSIGN_OR_RETURN(const auto cmp, CompareDecoders(other->params.w_dec.to(in.device), in.params->w_dec,
                                                           e.novel_threshold));
  ComparisonSummary out;
  out.other_checkpoint = other->step_dir;
  out.other_latents = other->params.w_dec.size(0);
  out.latents = in.params->w_dec.size(0);
  out.threshold = cmp.threshold;
  out.novel_fraction = cmp.novel_fraction;
  out.reconstruction_fraction = cmp.reconstruction_fraction;
  out.mean_max_cosine = cmp.mean_max_cosine;
  out.max_cosine_histogram = cmp.histogram;
  return out;
}

}  // namespace

absl::StatusOr<SuiteReport> RunEvaluationSuite(const SuiteInputs& in, const std::vector<std::string>& names) {
  torch::NoGradGuard no_grad;
  const TrainConfig& c = *in.config;
  const auto& all = EvaluationNames();
  for (const auto& name : names) {
    if (!IsEvaluationName(name)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown evaluation \"", name, "\" (",
                                                     absl::StrJoin(all, ", "), ")"));
    }
    if (const std::string missing = MissingForEvaluation(name, c); !missing.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(name, " needs ", missing));
    }
  }
  SuiteReport report;
  std::optional<ModelContext> model;
  const auto& lm = c.evaluation.language_model;
  const int64_t batch = std::max<int64_t>(c.data.language_model.sequences_per_forward, 1);
  for (const auto& name : all) {  // the suite's order, whatever the caller's
    if (std::find(names.begin(), names.end(), name) == names.end()) continue;
    if (in.progress) in.progress(name, 0);
    const auto start = std::chrono::steady_clock::now();
    absl::Status status;
    if (EvaluationNeedsLanguageModel(name) && !model) {
      absl::StatusOr<ModelContext> opened = absl::InternalError("not opened");
      try {
        opened = OpenModelContext(in, &report.split);
      } catch (const std::exception& e) {
        opened = absl::InternalError(e.what());
      }
      if (!opened.ok()) {
        report.failed.emplace_back(name, std::string(opened.status().message()));
        continue;
      }
      model = std::move(*opened);
    }
    try {
    if (name == "downstream_loss") {
      auto r = MeasureDownstreamLoss(*model->spliced, model->ids, batch);
      if (r.ok()) report.downstream_loss = *r;
      status = r.status();
    } else if (name == "ablation_sparsity") {
      AblationSparsityOptions o;
      o.latents = lm.ablation_latents;
      o.tokens_per_latent = lm.ablation_tokens_per_latent;
      o.horizon = std::min(lm.ablation_horizon, model->ids.size(1));
      o.seed = c.evaluation.seed;
      o.batch = batch;
      auto r = MeasureAblationSparsity(*model->spliced, model->ids, o);
      if (r.ok()) report.ablation_sparsity = *r;
      status = r.status();
    } else if (name == "token_stats" || name == "top_examples") {
      auto f = Firings(*model, batch);
      status = f.status();
      if (f.ok()) {
        const TokenStatistics stats = ComputeTokenStatistics(**f);
        if (name == "token_stats") {
          TokenStatisticsSummary s;
          s.latents_fired = stats.latents_fired;
          s.kept_tokens = (*f)->kept_tokens();
          s.mean_entropy = stats.mean_entropy;
          s.mean_effective_tokens = stats.mean_effective_tokens;
          s.median_effective_tokens = stats.median_effective_tokens;
          s.effective_tokens_histogram = stats.effective_tokens_histogram;
          report.token_stats = s;
        } else {
          const auto top = TopActivations(**f, lm.top_examples);
          TopExamplesSummary s;
          s.examples_per_latent = lm.top_examples;
          for (const auto& list : top) s.latents += list.empty() ? 0 : 1;
          s.file = TopExamplesJson(**f, top, &stats, lm.context_before, lm.context_after, model->first_sequence);
          s.file["hookpoint"] = model->data.hook.name;
          s.file["model"] = c.data.language_model.model_path;
          s.file["tokens"] = c.data.language_model.tokens_path;
          report.top_examples = std::move(s);
        }
      }
    } else if (name == "n2g") {
      auto f = Firings(*model, batch);
      status = f.status();
      if (f.ok()) {
        N2GRunOptions o;
        o.latents = lm.n2g_latents;
        o.examples = lm.n2g_examples;
        o.seed = c.evaluation.seed;
        o.batch = batch;
        auto r = MeasureN2G(*model->spliced, **f, o);
        if (r.ok()) report.n2g = *r;
        status = r.status();
      }
    } else if (name == "probes") {
      auto r = RunProbes(in);
      if (r.ok()) report.probes = *r;
      status = r.status();
    } else if (name == "shrinkage") {
      auto r = RunShrinkage(in, &report.split);
      if (r.ok()) report.shrinkage = *r;
      status = r.status();
    } else if (name == "sae_comparison") {
      auto r = RunComparison(in);
      if (r.ok()) report.sae_comparison = *r;
      status = r.status();
    }
    } catch (const std::exception& e) {
      // LibTorch reports a failed operation (out of memory, a bad shape) by throwing.
      status = absl::InternalError(e.what());
    }
    if (!status.ok()) {
      report.failed.emplace_back(name, std::string(status.message()));
      continue;
    }
    report.ran.push_back(name);
    report.seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    if (in.progress) in.progress(name, 1);
  }
  return report;
}

namespace {

nlohmann::json Number(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }

}  // namespace

nlohmann::json SuiteReportToJson(const SuiteReport& r) {
  nlohmann::json j = {{"ran", r.ran}, {"seconds", r.seconds}, {"split", r.split}};
  if (!r.error.empty()) j["error"] = r.error;
  if (!r.failed.empty()) {
    nlohmann::json failed = nlohmann::json::object();
    for (const auto& [name, message] : r.failed) failed[name] = message;
    j["failed"] = failed;
  }
  if (r.downstream_loss) {
    const auto& d = *r.downstream_loss;
    j["downstream_loss"] = {{"sequences", d.sequences},
                            {"positions", d.positions},
                            {"ce_clean", Number(d.ce_clean)},
                            {"ce_sae", Number(d.ce_sae)},
                            {"ce_zero_ablation", Number(d.ce_zero_ablation)},
                            {"ce_mean_ablation", Number(d.ce_mean_ablation)},
                            {"loss_recovered", Number(d.loss_recovered)},
                            {"loss_recovered_mean_ablation", Number(d.loss_recovered_mean_ablation)},
                            {"kl_sae", Number(d.kl_sae)},
                            {"kl_zero_ablation", Number(d.kl_zero_ablation)}};
  }
  if (r.ablation_sparsity) {
    const auto& a = *r.ablation_sparsity;
    j["ablation_sparsity"] = {{"horizon", a.horizon},
                              {"vocab", a.vocab},
                              {"latents", a.latents},
                              {"samples", a.samples},
                              {"mean", Number(a.mean)},
                              {"median", Number(a.median)},
                              {"baseline_samples", a.baseline_samples},
                              {"baseline_mean", Number(a.baseline_mean)},
                              {"baseline_median", Number(a.baseline_median)}};
  }
  if (r.token_stats) {
    const auto& t = *r.token_stats;
    j["token_stats"] = {{"latents_fired", t.latents_fired},
                        {"kept_tokens", t.kept_tokens},
                        {"mean_entropy", Number(t.mean_entropy)},
                        {"mean_effective_tokens", Number(t.mean_effective_tokens)},
                        {"median_effective_tokens", Number(t.median_effective_tokens)},
                        {"effective_tokens_histogram", t.effective_tokens_histogram}};
  }
  if (r.top_examples) {
    j["top_examples"] = {{"latents", r.top_examples->latents},
                         {"examples_per_latent", r.top_examples->examples_per_latent},
                         {"file", "top_examples.json"}};
  }
  if (r.n2g) {
    nlohmann::json per = nlohmann::json::array();
    for (const auto& l : r.n2g->per_latent) {
      per.push_back({{"latent", l.latent},
                     {"patterns", l.patterns},
                     {"precision", Number(l.precision)},
                     {"recall", Number(l.recall)},
                     {"f1", Number(l.f1)}});
    }
    j["n2g"] = {{"latents", r.n2g->latents},
                {"precision", Number(r.n2g->precision)},
                {"recall", Number(r.n2g->recall)},
                {"f1", Number(r.n2g->f1)},
                {"per_latent", per}};
  }
  if (r.probes) {
    nlohmann::json tasks = nlohmann::json::array();
    for (const auto& t : r.probes->tasks) {
      tasks.push_back({{"name", t.name},
                       {"positive_fraction", Number(t.positive_fraction)},
                       {"prior_loss", Number(t.prior_loss)},
                       {"best_latent", t.best_latent},
                       {"latent_loss", Number(t.latent_loss)},
                       {"best_channel", t.best_channel},
                       {"channel_loss", Number(t.channel_loss)}});
    }
    j["probes"] = {{"rows", r.probes->rows},
                   {"constant_tasks", r.probes->constant_tasks},
                   {"mean_latent_loss", Number(r.probes->mean_latent_loss)},
                   {"mean_channel_loss", Number(r.probes->mean_channel_loss)},
                   {"mean_prior_loss", Number(r.probes->mean_prior_loss)},
                   {"tasks", tasks}};
  }
  if (r.shrinkage) {
    const auto& s = *r.shrinkage;
    j["shrinkage"] = {{"tokens", s.tokens},
                      {"iterations", s.iterations},
                      {"mean_ratio", Number(s.mean_ratio)},
                      {"fvu_before", Number(s.fvu_before)},
                      {"fvu_after", Number(s.fvu_after)}};
  }
  if (r.sae_comparison) {
    const auto& s = *r.sae_comparison;
    j["sae_comparison"] = {{"other_checkpoint", s.other_checkpoint},
                           {"other_latents", s.other_latents},
                           {"latents", s.latents},
                           {"threshold", s.threshold},
                           {"novel_fraction", Number(s.novel_fraction)},
                           {"reconstruction_fraction", Number(s.reconstruction_fraction)},
                           {"mean_max_cosine", Number(s.mean_max_cosine)},
                           {"max_cosine_histogram", s.max_cosine_histogram}};
  }
  return j;
}

std::string FormatSuiteTable(const SuiteReport& r) {
  std::string out;
  auto line = [&](const std::string& label, const std::string& value) {
    absl::StrAppend(&out, absl::StrFormat("  %-34s %s\n", label, value));
  };
  for (const auto& [name, message] : r.failed) line(absl::StrCat(name, " FAILED"), message);
  auto num = [](double x) { return std::isfinite(x) ? absl::StrFormat("%.4g", x) : std::string("n/a"); };
  if (r.downstream_loss) {
    const auto& d = *r.downstream_loss;
    line("loss recovered", absl::StrCat(num(d.loss_recovered), " (mean ablation ", num(d.loss_recovered_mean_ablation), ")"));
    line("CE clean / SAE / zero / mean", absl::StrCat(num(d.ce_clean), " / ", num(d.ce_sae), " / ",
                                                      num(d.ce_zero_ablation), " / ", num(d.ce_mean_ablation)));
    line("KL(clean || SAE)", absl::StrCat(num(d.kl_sae), " nats (zero ablation ", num(d.kl_zero_ablation), ")"));
  }
  if (r.ablation_sparsity) {
    const auto& a = *r.ablation_sparsity;
    line("ablation sparsity", absl::StrCat(num(a.mean), " over ", a.samples, " ablations (coordinate baseline ",
                                           num(a.baseline_mean), ")"));
  }
  if (r.token_stats) {
    line("effective tokens per latent", absl::StrCat("mean ", num(r.token_stats->mean_effective_tokens), ", median ",
                                                     num(r.token_stats->median_effective_tokens)));
    line("token entropy per latent", absl::StrCat(num(r.token_stats->mean_entropy), " nats"));
  }
  if (r.top_examples) line("top examples", absl::StrCat(r.top_examples->latents, " latents"));
  if (r.n2g) {
    line("N2G precision / recall / F1", absl::StrCat(num(r.n2g->precision), " / ", num(r.n2g->recall), " / ",
                                                     num(r.n2g->f1), " over ", r.n2g->latents, " latents"));
  }
  if (r.probes) {
    line("probe loss: latent / channel / prior", absl::StrCat(num(r.probes->mean_latent_loss), " / ",
                                                              num(r.probes->mean_channel_loss), " / ",
                                                              num(r.probes->mean_prior_loss), " (",
                                                              r.probes->tasks.size(), " tasks)"));
  }
  if (r.shrinkage) {
    line("shrinkage (refined / original)", absl::StrCat(num(r.shrinkage->mean_ratio), ", FVU ",
                                                        num(r.shrinkage->fvu_before), " -> ", num(r.shrinkage->fvu_after)));
  }
  if (r.sae_comparison) {
    line("novel / reconstruction latents", absl::StrCat(num(r.sae_comparison->novel_fraction), " / ",
                                                        num(r.sae_comparison->reconstruction_fraction), " at cosine ",
                                                        num(r.sae_comparison->threshold)));
  }
  return out;
}

}  // namespace saegrid
