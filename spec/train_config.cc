#include "spec/train_config.h"

#include <algorithm>
#include <cmath>

#include "base/device_name.h"
#include "base/status_macros.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/activation/architecture_names.h"
#include "engine/eval/evaluation_names.h"
#include "spec/job_spec_loader.h"

namespace saegrid {
namespace {

// The rule may quote the user's value: it is cut, so that a huge value never comes back whole.
absl::Status Bad(const std::string& field, const std::string& rule) {
  constexpr size_t kMaxRule = 300;
  if (rule.size() <= kMaxRule) return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": ", rule.substr(0, kMaxRule), "... (", rule.size(), " characters)"));
}

// Ranges: `value` must lie in [lo, hi].
template <typename T>
absl::Status InRange(const std::string& field, T value, T lo, T hi) {
  if (value < lo || value > hi || (std::is_floating_point_v<T> && !std::isfinite(value))) {
    return Bad(field, absl::StrCat("must be in [", lo, ", ", hi, "], got ", value));
  }
  return absl::OkStatus();
}

// `value` must be finite and > 0.
absl::Status Positive(const std::string& field, double value) {
  if (!(value > 0) || !std::isfinite(value)) return Bad(field, absl::StrCat("must be > 0, got ", value));
  return absl::OkStatus();
}

std::string Quoted(Architecture a) { return absl::StrCat("\"", ArchitectureName(a), "\""); }

// The k schedule: k_initial (>= k) decreasing to k over k_schedule_steps steps; the two go together.
absl::Status MapKSchedule(const v1::ModelSpec& s, ModelConfig* m) {
  if (s.k_initial() == 0 && s.k_schedule_steps() == 0) return absl::OkStatus();
  if (!ArchitectureUsesK(m->architecture)) {
    return Bad(s.k_initial() != 0 ? "model.k_initial" : "model.k_schedule_steps",
               "applies only to the architectures that use k (\"topk\", \"batchtopk\", \"matryoshka\"), not " +
                   Quoted(m->architecture));
  }
  SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("model.k_schedule_steps", s.k_schedule_steps(), 0, int64_t{1} << 40));
  if (s.k_initial() == 0) return Bad("model.k_schedule_steps", "requires model.k_initial (the k to start from)");
  SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("model.k_initial", s.k_initial(), 1, 65536));
  if (s.k_initial() < m->k) {
    return Bad("model.k_initial", absl::StrCat("must be >= model.k (", m->k, "), got ", s.k_initial()));
  }
  if (m->num_latents > 0 && s.k_initial() > m->num_latents) {
    return Bad("model.k_initial", absl::StrCat("(", s.k_initial(), ") exceeds model.num_latents (", m->num_latents, ")"));
  }
  if (s.k_schedule_steps() == 0) {
    return Bad("model.k_schedule_steps", "is required with model.k_initial (the steps over which k decreases to model.k)");
  }
  m->k_initial = s.k_initial();
  m->k_schedule_steps = s.k_schedule_steps();
  return absl::OkStatus();
}

// Matryoshka's prefixes: positive and strictly increasing here; below the number of latents in
// CheckMatryoshkaPrefixesFit, once the data has said what it is.
absl::Status MapMatryoshkaPrefixes(const v1::ModelSpec& s, ModelConfig* m) {
  if (s.matryoshka_prefixes_size() == 0) return absl::OkStatus();
  if (m->architecture != Architecture::kMatryoshka) {
    return Bad("model.matryoshka_prefixes", "applies only to model.architecture \"matryoshka\", not " + Quoted(m->architecture));
  }
  for (int i = 0; i < s.matryoshka_prefixes_size(); ++i) {
    const std::string field = absl::StrCat("model.matryoshka_prefixes[", i, "]");
    const int64_t size = s.matryoshka_prefixes(i);
    if (size <= 0) return Bad(field, absl::StrCat("must be > 0, got ", size));
    SAEGRID_RETURN_IF_ERROR(InRange<int64_t>(field, size, 1, kMaxLatents));
    if (i > 0 && size <= s.matryoshka_prefixes(i - 1)) {
      return Bad(field, absl::StrCat("(", size, ") must be greater than model.matryoshka_prefixes[", i - 1, "] (",
                                     s.matryoshka_prefixes(i - 1), "): the prefixes are strictly increasing"));
    }
    m->matryoshka_prefixes.push_back(size);
  }
  return absl::OkStatus();
}

absl::Status MapModel(const v1::ModelSpec& s, ModelConfig* m) {
  if (s.architecture().empty()) {
    m->architecture = Architecture::kTopK;
  } else if (const auto a = ParseArchitecture(s.architecture())) {
    m->architecture = *a;
  } else {
    return Bad("model.architecture", "must be one of " + ArchitectureChoices() + ", got \"" + s.architecture() + "\"");
  }
  const bool uses_k = ArchitectureUsesK(m->architecture);
  if (s.d_in() != 0) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("model.d_in", s.d_in(), 1, kMaxDimension));
  m->d_in = s.d_in();
  if (s.num_latents() != 0) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("model.num_latents", s.num_latents(), 1, kMaxLatents));
  m->num_latents = s.num_latents();
  if (s.expansion_factor() != 0) {
    SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("model.expansion_factor", s.expansion_factor(), 1, 4096));
    m->expansion_factor = s.expansion_factor();
  }
  // relu and jumprelu have no k: accepted (a config can switch architectures), never required.
  if (s.k() != 0) {
    SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("model.k", s.k(), 1, 65536));
    m->k = s.k();
  }
  if (uses_k && m->num_latents > 0 && m->k > m->num_latents) {
    return Bad("model.k", absl::StrCat("(", m->k, ") exceeds model.num_latents (", m->num_latents, ")"));
  }
  SAEGRID_RETURN_IF_ERROR(MapKSchedule(s, m));
  if (s.normalize_inputs().empty() || s.normalize_inputs() == "none") m->normalize_inputs = InputNormalization::kNone;
  else if (s.normalize_inputs() == "layer_norm") m->normalize_inputs = InputNormalization::kLayerNorm;
  else if (s.normalize_inputs() == "dataset_constant") m->normalize_inputs = InputNormalization::kDatasetConstant;
  else return Bad("model.normalize_inputs", "must be \"none\", \"layer_norm\" or \"dataset_constant\", got \"" + s.normalize_inputs() + "\"");
  if (s.decoder_init().empty() || s.decoder_init() == "random_unit") m->decoder_init = DecoderInit::kRandomUnit;
  else if (s.decoder_init() == "orthogonal") m->decoder_init = DecoderInit::kOrthogonal;
  else return Bad("model.decoder_init", "must be \"random_unit\" or \"orthogonal\", got \"" + s.decoder_init() + "\"");
  if (s.geometric_median_samples() != 0) {
    SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("model.geometric_median_samples", s.geometric_median_samples(), 1, 1 << 20));
    m->geometric_median_samples = s.geometric_median_samples();
  }
  if (s.k_aux() != 0) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("model.k_aux", s.k_aux(), 1, kMaxLatents));
  m->k_aux = s.k_aux();
  if (s.has_auxk_alpha()) {
    SAEGRID_RETURN_IF_ERROR(InRange("model.auxk_alpha", s.auxk_alpha(), 0.0, 1e3));
    m->auxk_alpha = s.auxk_alpha();
  }
  if (s.dead_tokens_threshold() != 0) {
    SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("model.dead_tokens_threshold", s.dead_tokens_threshold(), 1, int64_t{1} << 50));
    m->dead_tokens_threshold = s.dead_tokens_threshold();
  }
  if (s.has_l1_coefficient()) {
    SAEGRID_RETURN_IF_ERROR(InRange("model.l1_coefficient", s.l1_coefficient(), 0.0, 1e6));
    m->l1_coefficient = s.l1_coefficient();
  }
  if (s.has_threshold_decay()) {
    SAEGRID_RETURN_IF_ERROR(InRange("model.threshold_decay", s.threshold_decay(), 0.0, 0.999999));
    m->threshold_decay = s.threshold_decay();
  }
  if (s.has_jumprelu_initial_threshold()) {
    SAEGRID_RETURN_IF_ERROR(Positive("model.jumprelu_initial_threshold", s.jumprelu_initial_threshold()));
    m->jumprelu_initial_threshold = s.jumprelu_initial_threshold();
  }
  if (s.has_jumprelu_bandwidth()) {
    SAEGRID_RETURN_IF_ERROR(Positive("model.jumprelu_bandwidth", s.jumprelu_bandwidth()));
    m->jumprelu_bandwidth = s.jumprelu_bandwidth();
  }
  if (s.has_l0_coefficient()) {
    SAEGRID_RETURN_IF_ERROR(InRange("model.l0_coefficient", s.l0_coefficient(), 0.0, 1e6));
    m->l0_coefficient = s.l0_coefficient();
  }
  SAEGRID_RETURN_IF_ERROR(InRange("model.target_l0", s.target_l0(), 0.0, static_cast<double>(kMaxLatents)));
  m->target_l0 = s.target_l0();
  SAEGRID_RETURN_IF_ERROR(MapMatryoshkaPrefixes(s, m));
  if (s.compute_dtype().empty() || s.compute_dtype() == "float32") m->compute_dtype = ComputeDtype::kFloat32;
  else if (s.compute_dtype() == "bfloat16") m->compute_dtype = ComputeDtype::kBFloat16;
  else return Bad("model.compute_dtype", "must be \"float32\" or \"bfloat16\", got \"" + s.compute_dtype() + "\"");
  // bfloat16 only ranks latents, which the k architectures' selections do; the threshold
  // architectures compare each pre-activation with a threshold, which needs float32.
  if (m->compute_dtype == ComputeDtype::kBFloat16 && !uses_k) {
    return Bad("model.compute_dtype", "bfloat16 only ranks latents (\"topk\", \"batchtopk\", \"matryoshka\"); use float32 for " +
                                          Quoted(m->architecture));
  }
  if (s.encoder_chunk_latents() != 0) {
    SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("model.encoder_chunk_latents", s.encoder_chunk_latents(), 1, kMaxLatents));
  }
  m->encoder_chunk_latents = s.encoder_chunk_latents();
  return absl::OkStatus();
}

// Every Matryoshka prefix is below the number of latents (the whole dictionary is the last
// prefix), when the config says what that number is: model.num_latents, or d_in (the model's or
// the synthetic data's) x expansion_factor. Activation files say it only when read: the trainer
// checks then.
absl::Status CheckMatryoshkaPrefixesFit(const TrainConfig& c) {
  const auto& m = c.model;
  if (m.matryoshka_prefixes.empty()) return absl::OkStatus();
  int64_t latents = m.num_latents;
  std::string what = "model.num_latents";
  if (latents == 0) {
    const int64_t d = m.d_in > 0 ? m.d_in : (c.data.use_synthetic ? c.data.synthetic.d : 0);
    if (d == 0) return absl::OkStatus();
    latents = d * m.expansion_factor;
    what = m.d_in > 0 ? "model.d_in x model.expansion_factor" : "data.synthetic.d x model.expansion_factor";
  }
  for (size_t i = 0; i < m.matryoshka_prefixes.size(); ++i) {
    if (m.matryoshka_prefixes[i] >= latents) {
      return Bad(absl::StrCat("model.matryoshka_prefixes[", i, "]"),
                 absl::StrCat("(", m.matryoshka_prefixes[i], ") must be < the number of latents (", latents, ", ", what,
                              "): the whole dictionary is always the last prefix"));
    }
  }
  return absl::OkStatus();
}

absl::Status MapOptimizer(const v1::OptimizerSpec& s, OptimizerConfig* o) {
  if (s.lr() != 0) SAEGRID_RETURN_IF_ERROR(InRange("optimizer.lr", s.lr(), 1e-12, 10.0));
  o->lr = s.lr();
  if (s.has_beta1()) SAEGRID_RETURN_IF_ERROR(InRange("optimizer.beta1", s.beta1(), 0.0, 0.999999));
  if (s.has_beta1()) o->beta1 = s.beta1();
  if (s.has_beta2()) SAEGRID_RETURN_IF_ERROR(InRange("optimizer.beta2", s.beta2(), 0.0, 0.99999999));
  if (s.has_beta2()) o->beta2 = s.beta2();
  if (s.has_eps()) SAEGRID_RETURN_IF_ERROR(InRange("optimizer.eps", s.eps(), 0.0, 1.0));
  if (s.has_eps()) o->eps = s.eps();
  SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("optimizer.warmup_steps", s.warmup_steps(), 0, int64_t{1} << 40));
  o->warmup_steps = s.warmup_steps();
  if (s.lr_decay().empty() || s.lr_decay() == "none") o->lr_decay = LrDecay::kNone;
  else if (s.lr_decay() == "linear") o->lr_decay = LrDecay::kLinear;
  else return Bad("optimizer.lr_decay", "must be \"none\" or \"linear\", got \"" + s.lr_decay() + "\"");
  if (s.has_decay_start_fraction()) {
    SAEGRID_RETURN_IF_ERROR(InRange("optimizer.decay_start_fraction", s.decay_start_fraction(), 0.0, 1.0));
    o->decay_start_fraction = s.decay_start_fraction();
  }
  SAEGRID_RETURN_IF_ERROR(InRange("optimizer.grad_clip_norm", s.grad_clip_norm(), 0.0, 1e12));
  o->grad_clip_norm = s.grad_clip_norm();
  SAEGRID_RETURN_IF_ERROR(InRange("optimizer.ema_decay", s.ema_decay(), 0.0, 0.999999));
  o->ema_decay = s.ema_decay();
  return absl::OkStatus();
}

absl::Status MapLanguageModel(const v1::LanguageModelDataSpec& s, LanguageModelDataConfig* c) {
  if (s.model_path().empty()) return Bad("data.language_model.model_path", "is required (a Hugging Face model directory)");
  if (s.tokens_path().empty()) return Bad("data.language_model.tokens_path", "is required (a token id file)");
  if (s.hookpoint().empty()) {
    return Bad("data.language_model.hookpoint", "is required, e.g. \"blocks.8.hook_resid_post\" or \"h.8\"");
  }
  if (s.hookpoint().find('/') != std::string::npos) {
    return Bad("data.language_model.hookpoint", "names a module, not a path: got \"" + s.hookpoint() + "\"");
  }
  c->model_path = s.model_path();
  c->tokens_path = s.tokens_path();
  c->hookpoint = s.hookpoint();
  if (!s.token_dtype().empty() && s.token_dtype() != "uint16" && s.token_dtype() != "uint32") {
    return Bad("data.language_model.token_dtype", "must be \"uint16\" or \"uint32\", got \"" + s.token_dtype() + "\"");
  }
  if (!s.token_dtype().empty()) c->token_dtype = s.token_dtype();
  if (s.context_length() != 0) {
    SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("data.language_model.context_length", s.context_length(), 1, 1 << 20));
    c->context_length = s.context_length();
  }
  for (int i = 0; i < s.exclude_token_ids_size(); ++i) {
    SAEGRID_RETURN_IF_ERROR(InRange<int64_t>(absl::StrCat("data.language_model.exclude_token_ids[", i, "]"),
                                             s.exclude_token_ids(i), 0, int64_t{1} << 32));
    c->exclude_token_ids.push_back(s.exclude_token_ids(i));
  }
  if (s.sequences_per_forward() != 0) {
    SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("data.language_model.sequences_per_forward", s.sequences_per_forward(), 1, 1 << 16));
    c->sequences_per_forward = s.sequences_per_forward();
  }
  SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("data.language_model.shuffle_sequences", s.shuffle_sequences(), 0, 1 << 24));
  c->shuffle_sequences = s.shuffle_sequences();
  SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("data.language_model.model_threads", s.model_threads(), 0, 1024));
  c->model_threads = s.model_threads();
  c->random_weights = s.has_random_weights();
  c->random_weights_seed = s.random_weights().seed();
  c->randomize_embeddings = s.random_weights().embeddings_too();
  return absl::OkStatus();
}

absl::Status MapData(const v1::DataSpec& s, DataConfig* d) {
  const int sources = (s.path().empty() ? 0 : 1) + (s.has_synthetic() ? 1 : 0) + (s.has_language_model() ? 1 : 0) +
                      (s.decoder_rows().empty() ? 0 : 1);
  if (sources != 1) {
    return Bad("data", "set exactly one of data.path, data.synthetic, data.language_model and data.decoder_rows");
  }
  d->path = s.path();
  d->decoder_rows = s.decoder_rows();
  d->use_synthetic = s.has_synthetic();
  if (s.has_language_model()) SAEGRID_RETURN_IF_ERROR(MapLanguageModel(s.language_model(), &d->language_model));
  if (s.has_synthetic()) {
    const auto& y = s.synthetic();
    auto& c = d->synthetic;
    if (y.num_samples() != 0) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("data.synthetic.num_samples", y.num_samples(), 2, int64_t{1} << 26));
    if (y.num_samples() != 0) c.num_samples = y.num_samples();
    if (y.num_features() != 0) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("data.synthetic.num_features", y.num_features(), 1, 1 << 16));
    if (y.num_features() != 0) c.num_features = y.num_features();
    if (y.d() != 0) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("data.synthetic.d", y.d(), 1, kMaxDimension));
    if (y.d() != 0) c.d = y.d();
    if (y.has_avg_active_features()) {
      SAEGRID_RETURN_IF_ERROR(InRange("data.synthetic.avg_active_features", y.avg_active_features(), 1e-6, static_cast<double>(c.num_features)));
      c.avg_active_features = y.avg_active_features();
    }
    if (y.has_lambda_decay()) {
      SAEGRID_RETURN_IF_ERROR(InRange("data.synthetic.lambda_decay", y.lambda_decay(), 0.0, 10.0));
      c.lambda_decay = y.lambda_decay();
    }
    c.seed = y.seed();
  }
  if (!s.dtype().empty() && s.dtype() != "bf16") {
    return Bad("data.dtype", "must be empty or \"bf16\", got \"" + s.dtype() + "\"");
  }
  d->dtype_override = s.dtype();
  if (s.batch_size() != 0) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("data.batch_size", s.batch_size(), 1, kMaxBatchSize));
  if (s.batch_size() != 0) d->batch_size = s.batch_size();
  if (s.block_rows() != 0) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("data.block_rows", s.block_rows(), 1, kMaxBatchSize));
  if (s.block_rows() != 0) d->block_rows = s.block_rows();
  if (s.shuffle_buffer_blocks() != 0) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("data.shuffle_buffer_blocks", s.shuffle_buffer_blocks(), 1, 1 << 16));
  if (s.shuffle_buffer_blocks() != 0) d->shuffle_buffer_blocks = s.shuffle_buffer_blocks();
  if (s.has_prefetch_batches()) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("data.prefetch_batches", s.prefetch_batches(), 0, 64));
  if (s.has_prefetch_batches()) d->prefetch_batches = s.prefetch_batches();
  if (s.has_eval_fraction()) SAEGRID_RETURN_IF_ERROR(InRange("data.eval_fraction", s.eval_fraction(), 0.0, 0.5));
  if (s.has_eval_fraction()) d->eval_fraction = s.eval_fraction();
  if (s.eval_max_tokens() != 0) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("data.eval_max_tokens", s.eval_max_tokens(), 1, int64_t{1} << 26));
  if (s.eval_max_tokens() != 0) d->eval_max_tokens = s.eval_max_tokens();
  d->seed = s.seed();
  return absl::OkStatus();
}

// evaluation.run and the evaluations' own fields (engine/eval/suite.h runs them).
absl::Status MapEvaluationRuns(const v1::EvaluationSpec& s, const DataConfig& data, EvaluationConfig* e) {
  e->at_checkpoints = s.at_checkpoints();
  e->seed = s.seed();
  const auto& m = s.language_model();
  auto count = [](const char* field, int64_t value, int64_t hi, int64_t* out) -> absl::Status {
    if (value == 0) return absl::OkStatus();
    SAEGRID_RETURN_IF_ERROR(InRange<int64_t>(absl::StrCat("evaluation.", field), value, 1, hi));
    *out = value;
    return absl::OkStatus();
  };
  auto& lm = e->language_model;
  SAEGRID_RETURN_IF_ERROR(count("language_model.sequences", m.sequences(), 1 << 20, &lm.sequences));
  SAEGRID_RETURN_IF_ERROR(count("language_model.ablation_latents", m.ablation_latents(), 1 << 16, &lm.ablation_latents));
  SAEGRID_RETURN_IF_ERROR(count("language_model.ablation_tokens_per_latent", m.ablation_tokens_per_latent(), 1 << 10,
                                &lm.ablation_tokens_per_latent));
  SAEGRID_RETURN_IF_ERROR(count("language_model.ablation_horizon", m.ablation_horizon(), 1 << 12, &lm.ablation_horizon));
  SAEGRID_RETURN_IF_ERROR(count("language_model.n2g_latents", m.n2g_latents(), 1 << 16, &lm.n2g_latents));
  SAEGRID_RETURN_IF_ERROR(count("language_model.n2g_examples", m.n2g_examples(), 1 << 10, &lm.n2g_examples));
  SAEGRID_RETURN_IF_ERROR(count("language_model.top_examples", m.top_examples(), 1 << 12, &lm.top_examples));
  if (m.has_context_before()) {
    SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("evaluation.language_model.context_before", m.context_before(), 0, 1 << 12));
    lm.context_before = m.context_before();
  }
  if (m.has_context_after()) {
    SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("evaluation.language_model.context_after", m.context_after(), 0, 1 << 12));
    lm.context_after = m.context_after();
  }
  const auto& p = s.probes();
  e->probes.labels_path = p.labels_path();
  e->probes.activations_path = p.activations_path();
  for (int i = 0; i < p.task_names_size(); ++i) {
    if (p.task_names(i).empty()) return Bad(absl::StrCat("evaluation.probes.task_names[", i, "]"), "is empty");
    e->probes.task_names.push_back(p.task_names(i));
  }
  SAEGRID_RETURN_IF_ERROR(count("probes.max_rows", p.max_rows(), int64_t{1} << 24, &e->probes.max_rows));
  SAEGRID_RETURN_IF_ERROR(count("probes.max_tasks", p.max_tasks(), 1 << 16, &e->probes.max_tasks));
  SAEGRID_RETURN_IF_ERROR(count("shrinkage_iterations", s.shrinkage_iterations(), 1 << 20, &e->shrinkage_iterations));
  e->compare_checkpoint = s.compare_checkpoint();
  if (s.has_novel_threshold()) {
    SAEGRID_RETURN_IF_ERROR(InRange("evaluation.novel_threshold", s.novel_threshold(), -1.0, 1.0));
    e->novel_threshold = s.novel_threshold();
  }
  TrainConfig with;  // what MissingForEvaluation reads
  with.data = data;
  with.evaluation = *e;
  for (int i = 0; i < s.run_size(); ++i) {
    const std::string& name = s.run(i);
    const std::string field = absl::StrCat("evaluation.run[", i, "]");
    if (!IsEvaluationName(name)) {
      return Bad(field, "unknown evaluation \"" + name + "\" (" + absl::StrJoin(EvaluationNames(), ", ") + ")");
    }
    if (std::find(e->run.begin(), e->run.end(), name) != e->run.end()) return Bad(field, "\"" + name + "\" is listed twice");
    const std::string missing = MissingForEvaluation(name, with);
    if (missing == "data.language_model") return Bad(field, name + " needs data.language_model");
    if (!missing.empty()) return Bad(missing, "is required by " + name);
    e->run.push_back(name);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TrainConfig> ToTrainConfig(const v1::JobSpec& spec) {
  TrainConfig c;
  c.name = spec.name();
  SAEGRID_RETURN_IF_ERROR(MapModel(spec.model(), &c.model));
  SAEGRID_RETURN_IF_ERROR(MapOptimizer(spec.optimizer(), &c.optimizer));
  SAEGRID_RETURN_IF_ERROR(MapData(spec.data(), &c.data));
  if (c.data.use_synthetic && c.model.d_in != 0 && c.model.d_in != c.data.synthetic.d) {
    return Bad("model.d_in", absl::StrCat("is ", c.model.d_in, " but data.synthetic.d is ", c.data.synthetic.d));
  }
  SAEGRID_RETURN_IF_ERROR(CheckMatryoshkaPrefixesFit(c));
  const auto& t = spec.training();
  if (t.total_tokens() <= 0) return Bad("training.total_tokens", "is required and must be > 0");
  SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("training.total_tokens", t.total_tokens(), 1, int64_t{1} << 50));
  c.training.total_tokens = t.total_tokens();
  if (t.log_every_steps() != 0) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("training.log_every_steps", t.log_every_steps(), 1, int64_t{1} << 40));
  if (t.log_every_steps() != 0) c.training.log_every_steps = t.log_every_steps();
  c.training.seed = t.seed();

  const auto& p = spec.parallelism();
  SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("parallelism.shards", p.shards(), 0, 4096));
  SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("parallelism.replicas", p.replicas(), 0, 4096));
  if (p.shards() > 0) c.parallelism.shards = p.shards();
  if (p.replicas() > 0) c.parallelism.replicas = p.replicas();
  if (p.has_capacity_factor()) {
    SAEGRID_RETURN_IF_ERROR(InRange("parallelism.capacity_factor", p.capacity_factor(), 1.0, 4096.0));
    c.parallelism.capacity_factor = p.capacity_factor();
  }
  c.parallelism.exact = p.exact();
  if (!p.backend().empty() && p.backend() != "gloo" && p.backend() != "nccl") {
    return Bad("parallelism.backend", "must be \"gloo\" or \"nccl\", got \"" + p.backend() + "\"");
  }
  if (!p.device().empty() && !ParseDeviceName(p.device())) {
    return Bad("parallelism.device", "must be \"cpu\", \"cuda\" or \"cuda:N\", got \"" + p.device() + "\"");
  }
  if (!p.backend().empty()) c.parallelism.backend = p.backend();
  if (!p.device().empty()) c.parallelism.device = p.device();
  const bool on_cuda = c.parallelism.device != "cpu";
  if (c.parallelism.backend == "nccl" && !on_cuda) {
    return Bad("parallelism.backend", "nccl moves CUDA tensors; use gloo with device cpu");
  }
  if (on_cuda && c.parallelism.backend != "nccl" && c.parallelism.shards * c.parallelism.replicas > 1) {
    return Bad("parallelism.backend", "a gang of cuda ranks needs nccl (gloo here moves CPU tensors only)");
  }
  if (!p.kernels().empty() && p.kernels() != "auto" && p.kernels() != "portable") {
    return Bad("parallelism.kernels", "must be \"auto\" or \"portable\", got \"" + p.kernels() + "\"");
  }
  if (!p.kernels().empty()) c.parallelism.kernels = p.kernels();
  c.parallelism.deterministic = p.deterministic();
  if (p.has_timeout_seconds()) {
    SAEGRID_RETURN_IF_ERROR(InRange("parallelism.timeout_seconds", p.timeout_seconds(), 1.0, 86400.0));
    c.parallelism.timeout_seconds = p.timeout_seconds();
  }
  if (c.data.batch_size % c.parallelism.replicas != 0) {
    return Bad("data.batch_size", absl::StrCat("(", c.data.batch_size, ") must be divisible by parallelism.replicas (",
                                               c.parallelism.replicas, ")"));
  }
  if (c.model.num_latents > 0 && c.model.num_latents % c.parallelism.shards != 0) {
    return Bad("model.num_latents", absl::StrCat("(", c.model.num_latents, ") must be divisible by parallelism.shards (",
                                                 c.parallelism.shards, ")"));
  }

  const auto& k = spec.checkpoint();
  if (!k.output_dir().empty()) c.checkpoint.output_dir = k.output_dir();
  if (!k.hookpoint().empty()) {
    if (k.hookpoint().find('/') != std::string::npos || k.hookpoint() == "." || k.hookpoint() == "..") {
      return Bad("checkpoint.hookpoint", "must be a plain directory name, got \"" + k.hookpoint() + "\"");
    }
    c.checkpoint.hookpoint = k.hookpoint();
  } else if (c.data.uses_language_model()) {
    // The sparsify layout names the SAE's directory after its hookpoint.
    c.checkpoint.hookpoint = c.data.language_model.hookpoint;
  }
  SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("checkpoint.every_steps", k.every_steps(), 0, int64_t{1} << 40));
  c.checkpoint.every_steps = k.every_steps();
  if (k.has_keep_last()) SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("checkpoint.keep_last", k.keep_last(), 0, 1 << 20));
  if (k.has_keep_last()) c.checkpoint.keep_last = k.keep_last();
  if (k.has_export_saelens()) c.checkpoint.export_saelens = k.export_saelens();
  // Only TopK gets the sparsify layout (the only activation sparsify loads); the others would
  // be left with no export.
  if (!c.checkpoint.export_saelens && c.model.architecture != Architecture::kTopK) {
    const std::string name = Quoted(c.model.architecture);
    return Bad("checkpoint.export_saelens", "must be true for model.architecture " + name +
                                                " (it is the only export a " + std::string(ArchitectureName(c.model.architecture)) +
                                                " SAE gets)");
  }
  if (k.has_resume()) c.checkpoint.resume = k.resume();

  if (!spec.evaluation().ground_truth_path().empty()) {
    if (c.data.use_synthetic) {
      return Bad("evaluation.ground_truth_path", "data.synthetic has its own ground truth; set one or the other");
    }
    c.evaluation.ground_truth_path = spec.evaluation().ground_truth_path();
  }
  if (spec.evaluation().has_recovery_cosine()) {
    SAEGRID_RETURN_IF_ERROR(InRange("evaluation.recovery_cosine", spec.evaluation().recovery_cosine(), 0.0, 1.0));
    c.evaluation.recovery_cosine = spec.evaluation().recovery_cosine();
  }
  SAEGRID_RETURN_IF_ERROR(MapEvaluationRuns(spec.evaluation(), c.data, &c.evaluation));
  SAEGRID_RETURN_IF_ERROR(InRange<int64_t>("resources.num_threads", spec.resources().num_threads(), 0, 1024));
  c.runtime.num_threads = static_cast<int>(spec.resources().num_threads());
  return c;
}

absl::StatusOr<TrainConfig> LoadTrainConfigFile(const std::string& path) {
  auto spec = LoadJobSpecFile(path);
  if (!spec.ok()) return absl::InvalidArgumentError(absl::StrCat("invalid config: ", spec.status().message()));
  auto config = ToTrainConfig(*spec);
  if (!config.ok()) return absl::InvalidArgumentError(absl::StrCat("invalid config ", path, ": ", config.status().message()));
  return config;
}

}  // namespace saegrid
