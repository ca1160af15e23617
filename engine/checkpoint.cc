#include "engine/checkpoint.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "base/durable_file.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/activation/activation_function.h"
#include "engine/activation/architecture_names.h"
#include "engine/eval/suite.h"
#include "engine/safetensors.h"
#include "formats/trainer_state.h"

namespace saegrid {
namespace fs = std::filesystem;
namespace {

constexpr int kFormatVersion = kTrainerStateFormatVersion;
constexpr char kLatest[] = "LATEST";

std::string CheckpointsDir(const std::string& output_dir) {
  return (fs::path(output_dir) / "checkpoints").string();
}

std::string StepDirName(int64_t step) { return absl::StrFormat("step_%09d", step); }

absl::Status WriteJson(const std::string& path, const nlohmann::json& j) {
  return WriteFileDurably(path, j.dump(2) + "\n");
}

absl::StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("checkpoint file " + path + " is missing");
  std::stringstream ss;
  ss << in.rdbuf();
  auto j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::DataLossError("checkpoint file " + path + " is not valid JSON");
  return j;
}

const char* NormalizationName(InputNormalization n) {
  switch (n) {
    case InputNormalization::kNone: return "none";
    case InputNormalization::kLayerNorm: return "layer_norm";
    case InputNormalization::kDatasetConstant: return "dataset_constant";
  }
  return "none";
}

// The dataset-wide input scale the exports fold out (1 without kDatasetConstant).
double ExportScale(const ModelConfig& m) {
  return m.normalize_inputs == InputNormalization::kDatasetConstant ? m.input_scale : 1.0;
}

// The published weights as an SAE of the raw activations. A dataset-wide input scale s folds
// into the biases: with a' = a / s, pre' = (x - b_pre / s) W_enc^T + b_enc / s selects the same
// latents (a positive scale keeps the order) and x_hat = a' W_dec + b_pre / s, so W_dec keeps
// unit rows and the latents are in the raw activations' units. (Thresholds on pre fold the same
// way, theta' = theta / s: ActivationFunction::Export.)
SaeParameters ExportedWeights(const CheckpointContents& c) {
  SaeParameters p = c.published;
  const double scale = ExportScale(c.model);
  if (scale != 1.0) {
    p.b_enc = p.b_enc / scale;
    p.b_pre = p.b_pre / scale;
  }
  return p;
}

// What the architecture exports as (engine/activation/): the SAELens architecture, whether
// sparsify loads it, and a "jumprelu" export's thresholds in the exported units.
absl::StatusOr<ActivationExport> ExportOf(const ModelConfig& m, const SaeParameters& published) {
  if (m.architecture == Architecture::kJumpReLU && !published.log_threshold.defined()) {
    return absl::InternalError("a jumprelu checkpoint's published weights have no log_threshold");
  }
  return MakeActivationFunction(m)->Export(published, ExportScale(m));
}

// What the exported SAE expects of its input: the dataset constant is folded out.
const char* ExportedNormalization(const ModelConfig& m) {
  return m.normalize_inputs == InputNormalization::kLayerNorm ? "layer_norm" : "none";
}

// Reads a tensor that must exist with the given shape, as float32.
absl::StatusOr<torch::Tensor> ReadTensor(const SafetensorsFile& file, const std::string& name,
                                         std::vector<int64_t> shape) {
  auto t = file.Get(name);
  if (!t.ok()) return absl::DataLossError(std::string(t.status().message()));
  if (t->sizes().vec() != shape) {
    return absl::DataLossError(absl::StrCat("checkpoint file ", file.path(), ": tensor \"", name,
                                            "\" has shape ", c10::str(t->sizes()), ", expected ",
                                            c10::str(c10::IntArrayRef(shape))));
  }
  return *t;
}

std::vector<std::pair<std::string, torch::Tensor>> Named(const std::string& prefix,
                                                         const std::vector<torch::Tensor>& ts) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (size_t i = 0; i < ts.size(); ++i) out.emplace_back(prefix + SaeParameters::Names()[i], ts[i]);
  return out;
}

absl::Status WriteSparsify(const std::string& dir, const CheckpointContents& c) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError("cannot create " + dir + ": " + ec.message());
  const auto& m = c.model;
  nlohmann::json cfg = {{"activation", "topk"},
                        {"expansion_factor", std::max<int64_t>(1, m.num_latents / m.d_in)},
                        {"normalize_decoder", true},
                        {"num_latents", m.num_latents},
                        {"k", m.k},
                        {"multi_topk", false},
                        {"skip_connection", false},
                        {"transcode", false},
                        {"d_in", m.d_in}};
  auto st = WriteJson((fs::path(dir) / "cfg.json").string(), cfg);
  if (!st.ok()) return st;
  const SaeParameters p = ExportedWeights(c);
  return WriteSafetensors((fs::path(dir) / "sae.safetensors").string(),
                          {{"encoder.weight", p.w_enc}, {"encoder.bias", p.b_enc},
                           {"W_dec", p.w_dec}, {"b_dec", p.b_pre}});
}

absl::Status WriteSaeLens(const std::string& dir, const CheckpointContents& c, const ActivationExport& plan) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError("cannot create " + dir + ": " + ec.message());
  const auto& m = c.model;
  // SAELens keeps unknown metadata fields (SAEMetadata takes any keyword), so the training
  // figures travel with the weights.
  nlohmann::json metadata = {{"sae_lens_version", "6.18.0"}, {"model_name", c.model_name},
                             {"hook_name", c.hook_name.empty() ? c.hookpoint : c.hook_name},
                             {"context_size", c.context_size}, {"dataset_path", c.dataset_path},
                             {"trained_architecture", std::string(ArchitectureName(m.architecture))},
                             {"training_steps", c.state.step}, {"training_tokens", c.state.tokens}};
  if (ArchitectureUsesK(m.architecture)) metadata["k"] = m.k;
  // SAELens' name for the nested dictionary sizes (increasing, the last the whole dictionary).
  if (m.architecture == Architecture::kMatryoshka) metadata["matryoshka_widths"] = MakeActivationFunction(m)->Prefixes();
  if (m.architecture == Architecture::kBatchTopK || m.architecture == Architecture::kMatryoshka) {
    metadata["inference_threshold"] = m.inference_threshold;  // training units; < 0: not fitted
  }
  if (c.evaluation != nullptr) {
    metadata["l0"] = c.evaluation->l0;
    metadata["dead_latents"] = std::llround(c.evaluation->dead_fraction * static_cast<double>(m.num_latents));
    metadata["evaluation_split"] = c.evaluation->split;
  }
  nlohmann::json cfg = {
      {"architecture", plan.saelens_architecture},
      {"d_in", m.d_in},
      {"d_sae", m.num_latents},
      {"dtype", "float32"},
      {"device", "cpu"},
      {"apply_b_dec_to_input", true},
      {"normalize_activations", ExportedNormalization(m)},
      {"reshape_activations", "none"},
      {"rescale_acts_by_decoder_norm", false},
      {"metadata", metadata}};
  if (plan.saelens_architecture == "topk") cfg["k"] = m.k;
  auto st = WriteJson((fs::path(dir) / "cfg.json").string(), cfg);
  if (!st.ok()) return st;
  const SaeParameters p = ExportedWeights(c);
  std::vector<std::pair<std::string, torch::Tensor>> weights = {
      {"W_enc", p.w_enc.t().contiguous()}, {"b_enc", p.b_enc}, {"W_dec", p.w_dec}, {"b_dec", p.b_pre}};
  if (plan.threshold.defined()) weights.emplace_back("threshold", plan.threshold);
  st = WriteSafetensors((fs::path(dir) / "sae_weights.safetensors").string(), weights);
  if (!st.ok() || c.evaluation == nullptr) return st;
  return WriteSafetensors((fs::path(dir) / "sparsity.safetensors").string(),
                          {{"sparsity", c.evaluation->log10_density}});
}

}  // namespace

nlohmann::json ModelConfigToJson(const ModelConfig& m) {
  return {{"architecture", std::string(ArchitectureName(m.architecture))},
          {"d_in", m.d_in},
          {"num_latents", m.num_latents},
          {"k", m.k},
          {"k_aux", m.k_aux},
          {"auxk_alpha", m.auxk_alpha},
          {"dead_tokens_threshold", m.dead_tokens_threshold},
          {"l1_coefficient", m.l1_coefficient},
          {"normalize_inputs", NormalizationName(m.normalize_inputs)},
          {"input_scale", m.input_scale},
          {"k_initial", m.k_initial},
          {"k_schedule_steps", m.k_schedule_steps},
          {"threshold_decay", m.threshold_decay},
          {"inference_threshold", m.inference_threshold},
          {"jumprelu_initial_threshold", m.jumprelu_initial_threshold},
          {"jumprelu_bandwidth", m.jumprelu_bandwidth},
          {"l0_coefficient", m.l0_coefficient},
          {"target_l0", m.target_l0},
          {"matryoshka_prefixes", m.matryoshka_prefixes}};
}

namespace {

// `r` is validated (ParseTrainerStateModel), so its names parse.
ModelConfig ModelConfigFromRecord(const TrainerStateModel& r) {
  ModelConfig m;
  m.architecture = ParseArchitecture(r.architecture).value_or(Architecture::kTopK);
  m.d_in = r.d_in;
  m.num_latents = r.num_latents;
  // Absent for an architecture without k: keep the default rather than 0.
  if (r.k > 0) m.k = r.k;
  m.k_aux = r.k_aux;
  m.auxk_alpha = r.auxk_alpha;
  m.dead_tokens_threshold = r.dead_tokens_threshold;
  m.l1_coefficient = r.l1_coefficient;
  m.normalize_inputs = r.normalize_inputs == "layer_norm"         ? InputNormalization::kLayerNorm
                       : r.normalize_inputs == "dataset_constant" ? InputNormalization::kDatasetConstant
                                                                  : InputNormalization::kNone;
  m.input_scale = r.input_scale;
  m.k_initial = r.k_initial;
  m.k_schedule_steps = r.k_schedule_steps;
  m.threshold_decay = r.threshold_decay;
  m.inference_threshold = r.inference_threshold;
  m.jumprelu_initial_threshold = r.jumprelu_initial_threshold;
  m.jumprelu_bandwidth = r.jumprelu_bandwidth;
  m.l0_coefficient = r.l0_coefficient;
  m.target_l0 = r.target_l0;
  m.matryoshka_prefixes = r.matryoshka_prefixes;
  return m;
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfigFromJson(const nlohmann::json& j) {
  auto record = ParseTrainerStateModel(j, "model config");
  if (!record.ok()) return record.status();
  return ModelConfigFromRecord(*record);
}

std::string CheckpointTempDir(const std::string& output_dir, int64_t step) {
  return (fs::path(CheckpointsDir(output_dir)) / (StepDirName(step) + ".tmp")).string();
}

absl::Status BeginCheckpoint(const std::string& output_dir, int64_t step) {
  const std::string tmp_dir = CheckpointTempDir(output_dir, step);
  std::error_code ec;
  fs::remove_all(tmp_dir, ec);
  fs::create_directories(tmp_dir, ec);
  if (ec) return absl::InternalError("cannot create " + tmp_dir + ": " + ec.message());
  return absl::OkStatus();
}

std::string SparsifyExportDir(const std::string& step_dir, const std::string& hookpoint) {
  return (fs::path(step_dir) / kSparsifyRunDirName / hookpoint).string();
}

std::string SaeLensExportDir(const std::string& step_dir) { return (fs::path(step_dir) / kSaeLensDirName).string(); }

std::string StateSliceFileName(int64_t shard, int64_t shards) {
  if (shards == 1) return "trainer_state.safetensors";
  return absl::StrFormat("trainer_state.shard-%05d-of-%05d.safetensors", shard, shards);
}

absl::Status WriteStateSlice(const std::string& temp_dir, const std::string& file,
                             const SaeParameters& raw, const TrainerState& s) {
  auto tensors = Named("params.", raw.All());
  for (auto& t : Named("adam.exp_avg.", s.adam_exp_avg)) tensors.push_back(t);
  for (auto& t : Named("adam.exp_avg_sq.", s.adam_exp_avg_sq)) tensors.push_back(t);
  for (auto& t : Named("ema.", s.ema_shadow)) tensors.push_back(t);
  tensors.emplace_back("dead.tokens_since_fired", s.tokens_since_fired);
  if (s.rng_state.defined()) tensors.emplace_back("rng.cpu", s.rng_state);
  return WriteSafetensors((fs::path(temp_dir) / file).string(), tensors);
}

absl::StatusOr<std::string> FinishCheckpoint(const std::string& output_dir, const CheckpointContents& c) {
  const fs::path root = CheckpointsDir(output_dir);
  const fs::path final_dir = root / StepDirName(c.state.step);
  const fs::path tmp_dir = CheckpointTempDir(output_dir, c.state.step);
  auto plan = ExportOf(c.model, c.published);
  if (!plan.ok()) return plan.status();
  absl::Status st;
  if (plan->sparsify_loadable) st = WriteSparsify(SparsifyExportDir(tmp_dir.string(), c.hookpoint), c);
  // Without a sparsify export the SAELens export is the only one, so export_saelens cannot drop it.
  if (st.ok() && (c.export_saelens || !plan->sparsify_loadable)) {
    st = WriteSaeLens(SaeLensExportDir(tmp_dir.string()), c, *plan);
  }
  if (!st.ok()) return st;
  const auto& s = c.state;
  nlohmann::json slices = nlohmann::json::array();
  for (const auto& slice : c.slices) {
    if (!fs::exists(tmp_dir / slice.file)) {
      return absl::InternalError("checkpoint slice " + (tmp_dir / slice.file).string() + " was not written");
    }
    slices.push_back({{"file", slice.file}, {"latent_begin", slice.latent_begin}, {"latent_end", slice.latent_end}});
  }
  nlohmann::json state = {{"format_version", kFormatVersion},
                          {"step", s.step},
                          {"tokens", s.tokens},
                          {"data_cursor", {{"epoch", s.cursor.epoch}, {"offset", s.cursor.offset}}},
                          {"adam_step", s.adam_step},
                          {"ema_updates", s.ema_updates},
                          {"has_ema", !s.ema_shadow.empty()},
                          {"overflow_tokens", s.overflow_tokens},
                          {"published_weights", c.published_is_ema ? "ema" : "raw"},
                          {"hookpoint", c.hookpoint},
                          {"parallelism", {{"shards", c.shards}, {"replicas", c.replicas}}},
                          {"state_slices", slices},
                          {"model", ModelConfigToJson(c.model)}};
  st = WriteJson((tmp_dir / "trainer_state.json").string(), state);
  if (!st.ok()) return st;
  if (c.evaluation != nullptr) {
    st = WriteJson((tmp_dir / "evaluation.json").string(), EvalResultToJson(*c.evaluation));
    if (!st.ok()) return st;
    if (c.evaluation->evaluations && c.evaluation->evaluations->top_examples) {
      st = WriteJson((tmp_dir / "top_examples.json").string(), c.evaluation->evaluations->top_examples->file);
      if (!st.ok()) return st;
    }
  }
  std::error_code ec;
  fs::remove_all(final_dir, ec);
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) return absl::InternalError("cannot rename " + tmp_dir.string() + ": " + ec.message());
  st = WriteFileDurably((root / kLatest).string(), StepDirName(c.state.step) + "\n");
  if (!st.ok()) return st;
  return final_dir.string();
}

absl::StatusOr<std::string> WriteCheckpoint(const std::string& output_dir,
                                            const CheckpointContents& c) {
  auto st = BeginCheckpoint(output_dir, c.state.step);
  if (!st.ok()) return st;
  const std::string file = StateSliceFileName(0, 1);
  st = WriteStateSlice(CheckpointTempDir(output_dir, c.state.step), file, c.raw, c.state);
  if (!st.ok()) return st;
  CheckpointContents with_slice = c;
  with_slice.slices = {{file, 0, c.model.num_latents}};
  return FinishCheckpoint(output_dir, with_slice);
}

absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& output_dir) {
  const fs::path root = CheckpointsDir(output_dir);
  std::ifstream in(root / kLatest);
  std::string name;
  if (in && std::getline(in, name) && !name.empty() && fs::is_directory(root / name)) {
    return (root / name).string();
  }
  // No LATEST (or it names a missing step): fall back to the highest complete step directory.
  std::string best;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return std::string();
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && absl::StartsWith(n, "step_") && !absl::EndsWith(n, ".tmp") && n > best) best = n;
  }
  return best.empty() ? std::string() : (root / best).string();
}

absl::StatusOr<ModelConfig> ReadCheckpointModel(const std::string& step_dir) {
  auto record = ReadTrainerStateFile((fs::path(step_dir) / "trainer_state.json").string());
  if (!record.ok()) return record.status();
  return ModelConfigFromRecord(record->model);
}

absl::StatusOr<PublishedSae> LoadPublishedSae(const std::string& path) {
  PublishedSae out;
  // "run/checkpoints/step_1/" names the same step as "run/checkpoints/step_1".
  fs::path normal = fs::path(path).lexically_normal();
  if (normal.has_parent_path() && normal.filename().empty()) normal = normal.parent_path();
  out.step_dir = normal.string();
  std::error_code ec;
  if (!fs::exists(fs::path(out.step_dir) / "trainer_state.json", ec)) {
    auto latest = FindLatestCheckpoint(out.step_dir);
    if (!latest.ok()) return latest.status();
    if (latest->empty()) {
      return absl::NotFoundError(absl::StrCat(path, ": neither a checkpoint step directory (no trainer_state.json) ",
                                              "nor an output directory with checkpoints"));
    }
    out.step_dir = *latest;
  }
  auto record = ReadTrainerStateFile((fs::path(out.step_dir) / "trainer_state.json").string());
  if (!record.ok()) return record.status();
  out.model = ModelConfigFromRecord(record->model);
  out.step = record->step;
  out.tokens = record->tokens;
  out.hookpoint = record->hookpoint.empty() ? "sae" : record->hookpoint;
  // The sparsify export when there is one: in the run directory, or (older checkpoints) directly
  // in the step directory, where a hookpoint named "saelens" would be the SAELens export.
  const fs::path step(out.step_dir);
  std::string sparsify_dir = SparsifyExportDir(out.step_dir, out.hookpoint);
  if (!fs::is_regular_file(fs::path(sparsify_dir) / "cfg.json", ec)) {
    sparsify_dir = out.hookpoint != kSaeLensDirName && fs::is_regular_file(step / out.hookpoint / "cfg.json", ec)
                       ? (step / out.hookpoint).string()
                       : std::string();
  }
  const std::string saelens_dir = SaeLensExportDir(out.step_dir);
  if (sparsify_dir.empty() && !fs::is_regular_file(fs::path(saelens_dir) / "cfg.json", ec)) {
    return absl::NotFoundError(absl::StrCat(out.step_dir, ": no exported weights: neither a sparsify export (",
                                            SparsifyExportDir(out.step_dir, out.hookpoint),
                                            "/cfg.json) nor a SAELens export (", saelens_dir, "/cfg.json)"));
  }
  ModelConfig exported;
  auto params = sparsify_dir.empty() ? LoadSaeLensSae(saelens_dir, &exported) : LoadSparsifySae(sparsify_dir, &exported);
  if (!params.ok()) return params.status();
  const std::string export_dir = sparsify_dir.empty() ? saelens_dir : sparsify_dir;
  if (exported.num_latents != out.model.num_latents || exported.d_in != out.model.d_in) {
    return absl::DataLossError(absl::StrCat(export_dir, ": the export's shape [", exported.num_latents, ", ",
                                            exported.d_in, "] differs from trainer_state.json's [",
                                            out.model.num_latents, ", ", out.model.d_in, "]"));
  }
  // JumpReLU's thresholds are trained weights; the other architectures have none (BatchTopK's
  // exported thresholds are its inference_threshold, which trainer_state.json holds).
  if (out.model.architecture == Architecture::kJumpReLU) {
    if (!params->log_threshold.defined()) {
      return absl::DataLossError(absl::StrCat(export_dir, ": a jumprelu checkpoint's export has no thresholds"));
    }
  } else {
    params->log_threshold = torch::Tensor();
  }
  // The exports hold the published weights with the input scale folded out; fold it back in so
  // that the recorded config applies.
  if (out.model.normalize_inputs == InputNormalization::kDatasetConstant) {
    params->b_enc = params->b_enc * out.model.input_scale;
    params->b_pre = params->b_pre * out.model.input_scale;
    if (params->log_threshold.defined()) params->log_threshold = params->log_threshold + std::log(out.model.input_scale);
  }
  out.params = *std::move(params);
  return out;
}

absl::StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& step_dir, int64_t latent_begin,
                                                int64_t latent_end) {
  LoadedCheckpoint out;
  out.dir = step_dir;
  // Every value is validated (formats/trainer_state.h) before it steers the resumed run.
  auto record = ReadTrainerStateFile((fs::path(step_dir) / "trainer_state.json").string());
  if (!record.ok()) return record.status();
  out.model = ModelConfigFromRecord(record->model);
  const int64_t n = out.model.num_latents, d = out.model.d_in;
  if (latent_end < 0) latent_end = n;
  if (latent_begin < 0 || latent_begin >= latent_end || latent_end > n) {
    return absl::InvalidArgumentError(absl::StrCat("latents [", latent_begin, ", ", latent_end,
                                                   ") are outside the checkpoint's ", n));
  }
  auto& s = out.state;
  s.latent_begin = latent_begin;
  s.latent_end = latent_end;
  s.step = record->step;
  s.tokens = record->tokens;
  s.cursor.epoch = record->cursor_epoch;
  s.cursor.offset = record->cursor_offset;
  s.adam_step = record->adam_step;
  s.ema_updates = record->ema_updates;
  s.overflow_tokens = record->overflow_tokens;
  std::vector<StateSliceInfo> slices;
  for (const auto& slice : record->state_slices) slices.push_back({slice.file, slice.latent_begin, slice.latent_end});
  const bool has_ema = record->has_ema;
  // The trained tensors in SaeParameters::Names() order: JumpReLU's log_threshold is the fifth.
  const size_t count = out.model.architecture == Architecture::kJumpReLU ? 5 : 4;
  const std::vector<std::string> groups = {"params.", "adam.exp_avg.", "adam.exp_avg_sq.", "ema."};

  // Per-latent tensors: the overlapping rows of every slice, concatenated. The others (b_pre):
  // the first slice's.
  std::vector<std::vector<std::vector<torch::Tensor>>> parts(groups.size(), std::vector<std::vector<torch::Tensor>>(count));
  std::vector<std::vector<torch::Tensor>> whole(groups.size(), std::vector<torch::Tensor>(count));
  std::vector<torch::Tensor> dead_parts;
  for (const auto& slice : slices) {
    const int64_t lo = std::max(latent_begin, slice.latent_begin), hi = std::min(latent_end, slice.latent_end);
    if (lo >= hi) continue;
    const std::string tensors_path = (fs::path(step_dir) / slice.file).string();
    auto file = SafetensorsFile::Open(tensors_path);
    if (!file.ok()) return absl::DataLossError(std::string(file.status().message()));
    const int64_t rows = slice.latent_end - slice.latent_begin;
    // Shapes in Names() order: W_enc, b_enc, W_dec, b_pre, log_threshold.
    const std::vector<std::vector<int64_t>> shapes = {{rows, d}, {rows}, {rows, d}, {d}, {rows}};
    for (size_t g = 0; g < groups.size(); ++g) {
      if (g == 3 && !has_ema) continue;
      for (size_t i = 0; i < count; ++i) {
        auto t = ReadTensor(*file, groups[g] + SaeParameters::Names()[i], shapes[i]);
        if (!t.ok()) return t.status();
        if (!SaeParameters::IsPerLatent(i)) {
          if (!whole[g][i].defined()) whole[g][i] = *t;
        } else {
          parts[g][i].push_back(t->narrow(0, lo - slice.latent_begin, hi - lo));
        }
      }
    }
    auto dead = file->Get("dead.tokens_since_fired");
    if (!dead.ok() || dead->sizes().vec() != std::vector<int64_t>{rows} || dead->scalar_type() != torch::kLong) {
      return absl::DataLossError(tensors_path + ": missing or malformed dead.tokens_since_fired");
    }
    dead_parts.push_back(dead->narrow(0, lo - slice.latent_begin, hi - lo));
    if (!s.rng_state.defined() && file->Has("rng.cpu")) s.rng_state = *file->Get("rng.cpu");
  }
  auto cat = [](const std::vector<torch::Tensor>& ts) { return torch::cat(ts, 0).contiguous(); };
  std::vector<std::vector<torch::Tensor>> tensors(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    if (g == 3 && !has_ema) break;
    for (size_t i = 0; i < count; ++i) {
      tensors[g].push_back(SaeParameters::IsPerLatent(i) ? cat(parts[g][i]) : whole[g][i]);
    }
  }
  out.raw = SaeParameters::FromList(tensors[0]);
  s.adam_exp_avg = tensors[1];
  s.adam_exp_avg_sq = tensors[2];
  s.ema_shadow = tensors[3];
  s.tokens_since_fired = cat(dead_parts);
  return out;
}

absl::Status PruneCheckpoints(const std::string& output_dir, int64_t keep_last) {
  if (keep_last <= 0) return absl::OkStatus();
  std::vector<std::string> steps;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(CheckpointsDir(output_dir), ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && absl::StartsWith(n, "step_") && !absl::EndsWith(n, ".tmp")) {
      steps.push_back(e.path().string());
    }
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + keep_last < steps.size(); ++i) fs::remove_all(steps[i], ec);
  return absl::OkStatus();
}

absl::StatusOr<SaeParameters> LoadSparsifySae(const std::string& dir, ModelConfig* config) {
  const std::string cfg_path = (fs::path(dir) / "cfg.json").string();
  auto cfg = ReadJson(cfg_path);
  if (!cfg.ok()) return cfg.status();
  ModelConfig m;
  try {
    const std::string act = cfg->at("activation").get<std::string>();
    if (act == "topk") {
      m.architecture = Architecture::kTopK;
    } else if (act == "relu") {  // written by older checkpoints for ReLU; sparsify itself refuses it
      m.architecture = Architecture::kReLU;
    } else {
      return absl::DataLossError(absl::StrCat(cfg_path, ": activation: must be \"topk\" (or \"relu\"), got \"", act, "\""));
    }
    m.d_in = cfg->at("d_in").get<int64_t>();
    m.num_latents = cfg->at("num_latents").get<int64_t>();
    m.k = cfg->at("k").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(cfg_path, ": ", e.what()));
  }
  const std::string weights = (fs::path(dir) / "sae.safetensors").string();
  auto file = SafetensorsFile::Open(weights);
  if (!file.ok()) return absl::DataLossError(std::string(file.status().message()));
  const int64_t n = m.num_latents, d = m.d_in;
  auto w_enc = ReadTensor(*file, "encoder.weight", {n, d});
  auto b_enc = ReadTensor(*file, "encoder.bias", {n});
  auto w_dec = ReadTensor(*file, "W_dec", {n, d});
  auto b_dec = ReadTensor(*file, "b_dec", {d});
  for (const auto* t : {&w_enc, &b_enc, &w_dec, &b_dec}) {
    if (!t->ok()) return t->status();
  }
  if (config != nullptr) *config = ResolveModelConfig(m, d);
  return SaeParameters::FromList({w_enc->to(torch::kFloat), b_enc->to(torch::kFloat), w_dec->to(torch::kFloat),
                                  b_dec->to(torch::kFloat)});
}

absl::StatusOr<SaeParameters> LoadSaeLensSae(const std::string& dir, ModelConfig* config) {
  const std::string cfg_path = (fs::path(dir) / "cfg.json").string();
  auto cfg = ReadJson(cfg_path);
  if (!cfg.ok()) return cfg.status();
  ModelConfig m;
  std::string architecture;
  try {
    architecture = cfg->at("architecture").get<std::string>();
    m.d_in = cfg->at("d_in").get<int64_t>();
    m.num_latents = cfg->at("d_sae").get<int64_t>();
    const std::string norm = cfg->value("normalize_activations", std::string("none"));
    if (norm == "layer_norm") {
      m.normalize_inputs = InputNormalization::kLayerNorm;
    } else if (norm != "none") {
      return absl::DataLossError(absl::StrCat(cfg_path, ": normalize_activations: must be \"none\" or \"layer_norm\", got \"",
                                              norm, "\""));
    }
    const nlohmann::json metadata = cfg->value("metadata", nlohmann::json::object());
    if (architecture == "topk") {
      m.architecture = Architecture::kTopK;
      m.k = cfg->at("k").get<int64_t>();
    } else if (architecture == "standard") {
      m.architecture = Architecture::kReLU;
    } else if (architecture == "jumprelu") {
      // BatchTopK and Matryoshka are exported as JumpReLU; the metadata says what was trained.
      const auto trained = ParseArchitecture(metadata.value("trained_architecture", std::string("jumprelu")));
      m.architecture = trained == Architecture::kBatchTopK || trained == Architecture::kMatryoshka ? *trained
                                                                                                    : Architecture::kJumpReLU;
      if (m.architecture != Architecture::kJumpReLU) {
        m.k = metadata.value("k", m.k);
        const auto widths = metadata.value("matryoshka_widths", std::vector<int64_t>());
        if (m.architecture == Architecture::kMatryoshka && widths.size() > 1) {
          m.matryoshka_prefixes.assign(widths.begin(), widths.end() - 1);
        }
      }
    } else {
      return absl::DataLossError(absl::StrCat(cfg_path, ": architecture: must be \"topk\", \"standard\" or \"jumprelu\", got \"",
                                              architecture, "\""));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(cfg_path, ": ", e.what()));
  }
  const std::string weights = (fs::path(dir) / "sae_weights.safetensors").string();
  auto file = SafetensorsFile::Open(weights);
  if (!file.ok()) return absl::DataLossError(std::string(file.status().message()));
  const int64_t n = m.num_latents, d = m.d_in;
  auto w_enc = ReadTensor(*file, "W_enc", {d, n});
  auto b_enc = ReadTensor(*file, "b_enc", {n});
  auto w_dec = ReadTensor(*file, "W_dec", {n, d});
  auto b_dec = ReadTensor(*file, "b_dec", {d});
  for (const auto* t : {&w_enc, &b_enc, &w_dec, &b_dec}) {
    if (!t->ok()) return t->status();
  }
  SaeParameters p = SaeParameters::FromList({w_enc->to(torch::kFloat).t().contiguous(), b_enc->to(torch::kFloat),
                                             w_dec->to(torch::kFloat), b_dec->to(torch::kFloat)});
  if (architecture == "jumprelu") {
    auto threshold = ReadTensor(*file, "threshold", {n});
    if (!threshold.ok()) return threshold.status();
    const torch::Tensor theta = threshold->to(torch::kFloat);
    if (m.architecture == Architecture::kJumpReLU) {
      p.log_threshold = theta.log().contiguous();
    } else if (n > 0) {
      m.inference_threshold = theta[0].item<double>();
    }
  }
  if (config != nullptr) *config = ResolveModelConfig(m, d);
  return p;
}

}  // namespace saegrid
