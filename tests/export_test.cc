// The checkpoint's exports for every architecture, on files WriteCheckpoint writes: the sparsify
// run directory (TopK only, nothing but hookpoint directories with cfg.json and sae.safetensors),
// the SAELens export per architecture with its metadata and thresholds (the input scale folded
// out), LoadPublishedSae and LoadCheckpoint round trips (JumpReLU's log_threshold, its Adam
// moments and EMA across two state slices), checkpoints in the layout written before the sparsify
// run directory, and the coordinator's inspection of each (formats/checkpoint_inspector.h).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "engine/activation/architecture_names.h"
#include "engine/checkpoint.h"
#include "engine/safetensors.h"
#include "formats/checkpoint_archive.h"
#include "formats/checkpoint_inspector.h"
#include "nlohmann/json.hpp"
#include "tests/test_support.h"

namespace saegrid {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::ReadFile;
using testing::TempDir;

constexpr int64_t kN = 16, kD = 4, kK = 3;
// A dataset-constant input scale that is not 1, so that an export that forgot to fold it out
// (or a reader that forgot to fold it back in) shows.
constexpr double kScale = 2.5;
constexpr double kInferenceThreshold = 0.75;  // BatchTopK and Matryoshka, in training units
constexpr int64_t kStep = 7;
const char kHookpoint[] = "blocks.1.hook_resid_post";

std::vector<Architecture> AllArchitectures() {
  std::vector<Architecture> out;
  for (const auto& [name, a] : kArchitectureNames) out.push_back(a);
  return out;
}

std::string Name(Architecture a) { return std::string(ArchitectureName(a)); }

// Every ModelConfig field trainer_state.json records, set away from its default.
ModelConfig Model(Architecture a) {
  ModelConfig m;
  m.architecture = a;
  m.d_in = kD;
  m.num_latents = kN;
  m.k = kK;
  m.k_aux = 2;
  m.normalize_inputs = InputNormalization::kDatasetConstant;
  m.input_scale = kScale;
  if (ArchitectureUsesK(a)) {
    m.k_initial = 6;
    m.k_schedule_steps = 5;
  }
  m.threshold_decay = 0.99;
  if (a == Architecture::kBatchTopK || a == Architecture::kMatryoshka) m.inference_threshold = kInferenceThreshold;
  m.jumprelu_initial_threshold = 0.01;
  m.jumprelu_bandwidth = 0.05;
  m.l0_coefficient = 0.002;
  m.target_l0 = 4;
  if (a == Architecture::kMatryoshka) m.matryoshka_prefixes = {2, 4, 8};
  return m;
}

SaeParameters RandomParameters(const ModelConfig& m, int seed) {
  torch::manual_seed(seed);
  SaeParameters p = SaeParameters::FromList(
      {torch::randn({m.num_latents, m.d_in}), torch::randn({m.num_latents}),
       torch::nn::functional::normalize(torch::randn({m.num_latents, m.d_in}),
                                        torch::nn::functional::NormalizeFuncOptions().dim(1)),
       torch::randn({m.d_in})});
  if (m.architecture == Architecture::kJumpReLU) p.log_threshold = torch::randn({m.num_latents}) * 0.3 - 1.0;
  return p;
}

EvalResult Evaluation() {
  EvalResult e;
  e.num_latents = kN;
  e.l0 = 2.5;
  e.dead_fraction = 3.0 / kN;
  e.log10_density = torch::full({kN}, -2.0);
  return e;
}

// A checkpoint of `a`: raw weights, different published (EMA) weights, moments, EMA.
CheckpointContents Contents(Architecture a, const EvalResult* evaluation) {
  CheckpointContents c;
  c.model = Model(a);
  c.hookpoint = kHookpoint;
  c.raw = RandomParameters(c.model, 1);
  c.published = RandomParameters(c.model, 2);
  c.published_is_ema = true;
  c.state.step = kStep;
  c.state.tokens = kStep * 32;
  c.state.adam_step = kStep;
  c.state.adam_exp_avg = RandomParameters(c.model, 3).All();
  std::vector<torch::Tensor> second;
  for (const auto& t : RandomParameters(c.model, 4).All()) second.push_back(t.abs());
  c.state.adam_exp_avg_sq = second;
  c.state.ema_shadow = c.published.All();
  c.state.ema_updates = kStep;
  c.state.tokens_since_fired = torch::arange(kN, torch::kLong);
  c.evaluation = evaluation;
  return c;
}

std::string Write(const std::string& output_dir, const CheckpointContents& c) {
  auto dir = WriteCheckpoint(output_dir, c);
  EXPECT_TRUE(dir.ok()) << dir.status();
  return dir.ok() ? *dir : std::string();
}

std::set<std::string> Entries(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string() + (e.is_directory() ? "/" : ""));
  return out;
}

void ExpectClose(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  ASSERT_TRUE(got.defined()) << what;
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(torch::allclose(got.to(torch::kFloat), want.to(torch::kFloat), 1e-5, 1e-6)) << what;
}

nlohmann::json ReadJson(const fs::path& path) { return nlohmann::json::parse(ReadFile(path.string())); }

// Rewrites the safetensors file at `path` without the tensor `name`.
void RemoveTensor(const std::string& path, const std::string& name) {
  std::vector<std::pair<std::string, torch::Tensor>> kept;
  {
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    ASSERT_TRUE(file->Has(name)) << name;
    for (const auto& e : file->entries()) {
      if (e.name != name) kept.emplace_back(e.name, file->Get(e.name)->clone());
    }
  }
  ASSERT_TRUE(WriteSafetensors(path, kept).ok());
}

std::string SaeLensArchitecture(Architecture a) {
  if (a == Architecture::kTopK) return "topk";
  if (a == Architecture::kReLU) return "standard";
  return "jumprelu";
}

TEST(Exports, EachArchitectureGetsTheLayoutsItsLoadersAccept) {
  const EvalResult evaluation = Evaluation();
  for (const Architecture a : AllArchitectures()) {
    SCOPED_TRACE(Name(a));
    TempDir dir;
    const CheckpointContents c = Contents(a, &evaluation);
    const fs::path step = Write(dir / "run", c);
    const bool topk = a == Architecture::kTopK;
    std::set<std::string> expected = {"saelens/", "trainer_state.json", "trainer_state.safetensors", "evaluation.json"};
    if (topk) expected.insert("sparsify/");
    EXPECT_EQ(Entries(step), expected);

    // The sparsify run directory: only hookpoint directories, each with cfg.json and
    // sae.safetensors (what SparseCoder.load_many takes a sub-directory for).
    if (topk) {
      EXPECT_EQ(Entries(step / "sparsify"), std::set<std::string>{std::string(kHookpoint) + "/"});
      for (const auto& hookpoint : fs::directory_iterator(step / "sparsify")) {
        EXPECT_EQ(Entries(hookpoint.path()), (std::set<std::string>{"cfg.json", "sae.safetensors"}));
      }
      const auto cfg = ReadJson(fs::path(SparsifyExportDir(step.string(), kHookpoint)) / "cfg.json");
      EXPECT_EQ(cfg["activation"], "topk");
      EXPECT_EQ(cfg["k"], kK);
      EXPECT_EQ(cfg["num_latents"], kN);
      EXPECT_EQ(cfg["d_in"], kD);
      auto sae = SafetensorsFile::Open(SparsifyExportDir(step.string(), kHookpoint) + "/sae.safetensors");
      ASSERT_TRUE(sae.ok()) << sae.status();
      ExpectClose(*sae->Get("encoder.weight"), c.published.w_enc, "encoder.weight");
      ExpectClose(*sae->Get("encoder.bias"), c.published.b_enc / kScale, "encoder.bias");
      ExpectClose(*sae->Get("W_dec"), c.published.w_dec, "W_dec");
      ExpectClose(*sae->Get("b_dec"), c.published.b_pre / kScale, "b_dec");
    }

    // SAELens: the architecture it is exported as, and what was trained in the metadata.
    const fs::path lens = SaeLensExportDir(step.string());
    EXPECT_EQ(Entries(lens), (std::set<std::string>{"cfg.json", "sae_weights.safetensors", "sparsity.safetensors"}));
    const auto cfg = ReadJson(lens / "cfg.json");
    EXPECT_EQ(cfg["architecture"], SaeLensArchitecture(a));
    EXPECT_EQ(cfg["d_in"], kD);
    EXPECT_EQ(cfg["d_sae"], kN);
    EXPECT_EQ(cfg["normalize_activations"], "none");  // the dataset constant is folded out
    EXPECT_EQ(cfg.contains("k"), topk);
    if (topk) {
      EXPECT_EQ(cfg["k"], kK);
    }
    const auto& metadata = cfg["metadata"];
    EXPECT_EQ(metadata["trained_architecture"], Name(a));
    EXPECT_EQ(metadata["hook_name"], kHookpoint);
    EXPECT_EQ(metadata["training_steps"], kStep);
    EXPECT_EQ(metadata["training_tokens"], kStep * 32);
    EXPECT_DOUBLE_EQ(metadata["l0"].get<double>(), 2.5);
    EXPECT_EQ(metadata["dead_latents"], 3);
    EXPECT_EQ(metadata["evaluation_split"], "held_out");
    EXPECT_EQ(metadata.contains("k"), ArchitectureUsesK(a));
    if (ArchitectureUsesK(a)) {
      EXPECT_EQ(metadata["k"], kK);
    }
    if (a == Architecture::kMatryoshka) {
      EXPECT_EQ(metadata["matryoshka_widths"].get<std::vector<int64_t>>(), (std::vector<int64_t>{2, 4, 8, kN}));
    } else {
      EXPECT_FALSE(metadata.contains("matryoshka_widths"));
    }

    auto weights = SafetensorsFile::Open((lens / "sae_weights.safetensors").string());
    ASSERT_TRUE(weights.ok()) << weights.status();
    ExpectClose(*weights->Get("W_enc"), c.published.w_enc.t(), "W_enc");  // SAELens stores [d, n]
    ExpectClose(*weights->Get("b_enc"), c.published.b_enc / kScale, "b_enc");
    ExpectClose(*weights->Get("W_dec"), c.published.w_dec, "W_dec");
    ExpectClose(*weights->Get("b_dec"), c.published.b_pre / kScale, "b_dec");
    // Thresholds on the pre-activations fold out as b_enc does: theta' = theta / s.
    if (a == Architecture::kJumpReLU) {
      ExpectClose(*weights->Get("threshold"), c.published.log_threshold.exp() / kScale, "threshold");
    } else if (a == Architecture::kBatchTopK || a == Architecture::kMatryoshka) {
      ExpectClose(*weights->Get("threshold"), torch::full({kN}, kInferenceThreshold / kScale), "threshold");
    } else {
      EXPECT_FALSE(weights->Has("threshold"));
    }
    auto sparsity = SafetensorsFile::Open((lens / "sparsity.safetensors").string());
    ASSERT_TRUE(sparsity.ok()) << sparsity.status();
    EXPECT_EQ(sparsity->Entry("sparsity")->shape, (std::vector<int64_t>{kN}));

    // The SAELens reader states what was trained, in the export's (raw) units.
    ModelConfig read;
    auto params = LoadSaeLensSae(lens.string(), &read);
    ASSERT_TRUE(params.ok()) << params.status();
    EXPECT_EQ(read.architecture, a);
    EXPECT_EQ(read.num_latents, kN);
    EXPECT_EQ(params->log_threshold.defined(), a == Architecture::kJumpReLU);
    if (a == Architecture::kBatchTopK || a == Architecture::kMatryoshka) {
      EXPECT_NEAR(read.inference_threshold, kInferenceThreshold / kScale, 1e-6);
      EXPECT_EQ(read.k, kK);
    }
    if (a == Architecture::kMatryoshka) {
      EXPECT_EQ(read.matryoshka_prefixes, (std::vector<int64_t>{2, 4, 8}));
    }
  }
}

TEST(Exports, LoadPublishedSaeRoundTripsWeightsAndModelOfEveryArchitecture) {
  for (const Architecture a : AllArchitectures()) {
    SCOPED_TRACE(Name(a));
    TempDir dir;
    const CheckpointContents c = Contents(a, nullptr);
    const std::string step = Write(dir / "run", c);
    auto expect_published = [&](const std::string& path, const std::string& step_dir, const std::string& how) {
      SCOPED_TRACE(how);
      auto sae = LoadPublishedSae(path);
      ASSERT_TRUE(sae.ok()) << sae.status();
      EXPECT_EQ(sae->step_dir, step_dir);
      EXPECT_EQ(sae->step, kStep);
      EXPECT_EQ(sae->hookpoint, kHookpoint);
      // Every recorded model field, inference_threshold and the Matryoshka prefixes included.
      EXPECT_EQ(ModelConfigToJson(sae->model), ModelConfigToJson(c.model));
      const auto got = sae->params.All(), want = c.published.All();
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) ExpectClose(got[i], want[i], SaeParameters::Names()[i]);
    };
    expect_published(dir / "run", step, "the output directory");
    if (a == Architecture::kTopK) {
      // From the sparsify export alone, and from the SAELens export alone.
      fs::remove_all(SaeLensExportDir(step));
      expect_published(step, step, "sparsify only");
      const std::string other = Write(dir / "other", c);
      fs::remove_all(fs::path(other) / "sparsify");
      expect_published(other, other, "SAELens only");
    }
  }
}

TEST(Exports, ExportSaeLensFalseLeavesOutOnlyTopKsSaeLensExport) {
  for (const Architecture a : AllArchitectures()) {
    SCOPED_TRACE(Name(a));
    TempDir dir;
    CheckpointContents c = Contents(a, nullptr);
    c.export_saelens = false;
    const std::string step = Write(dir / "run", c);
    EXPECT_EQ(fs::exists(SaeLensExportDir(step)), a != Architecture::kTopK);
    EXPECT_EQ(fs::exists(fs::path(step) / "sparsify"), a == Architecture::kTopK);
    EXPECT_TRUE(LoadPublishedSae(step).ok());
  }
}

// Writes `c` as two state slices [0, split) and [split, n), as two shards would.
std::string WriteTwoSlices(const std::string& output_dir, CheckpointContents c, int64_t split) {
  EXPECT_TRUE(BeginCheckpoint(output_dir, c.state.step).ok());
  const std::string temp = CheckpointTempDir(output_dir, c.state.step);
  const int64_t n = c.model.num_latents;
  c.slices.clear();
  for (int64_t shard = 0; shard < 2; ++shard) {
    const int64_t begin = shard == 0 ? 0 : split, count = shard == 0 ? split : n - split;
    TrainerState s = c.state;
    s.adam_exp_avg = SaeParameters::FromList(c.state.adam_exp_avg).Latents(begin, count).All();
    s.adam_exp_avg_sq = SaeParameters::FromList(c.state.adam_exp_avg_sq).Latents(begin, count).All();
    s.ema_shadow = SaeParameters::FromList(c.state.ema_shadow).Latents(begin, count).All();
    s.tokens_since_fired = c.state.tokens_since_fired.narrow(0, begin, count);
    const std::string file = StateSliceFileName(shard, 2);
    EXPECT_TRUE(WriteStateSlice(temp, file, c.raw.Latents(begin, count), s).ok());
    c.slices.push_back({file, begin, begin + count});
  }
  c.shards = 2;
  auto dir = FinishCheckpoint(output_dir, c);
  EXPECT_TRUE(dir.ok()) << dir.status();
  return dir.ok() ? *dir : std::string();
}

void ExpectTensorsEqual(const std::vector<torch::Tensor>& got, const std::vector<torch::Tensor>& want,
                        const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_TRUE(torch::equal(got[i], want[i])) << what << " " << SaeParameters::Names()[i];
  }
}

TEST(Checkpoint, JumpReLUThresholdsMomentsAndEmaRoundTripAcrossTwoSlices) {
  for (const Architecture a : {Architecture::kJumpReLU, Architecture::kTopK}) {
    SCOPED_TRACE(Name(a));
    TempDir dir;
    const CheckpointContents c = Contents(a, nullptr);
    const std::string step = WriteTwoSlices(dir / "run", c, 6);
    const size_t tensors = a == Architecture::kJumpReLU ? 5 : 4;
    // The slice holds its rows of log_threshold like b_enc's, in every group.
    auto slice = SafetensorsFile::Open(step + "/" + StateSliceFileName(1, 2));
    ASSERT_TRUE(slice.ok()) << slice.status();
    for (const char* group : {"params.", "adam.exp_avg.", "adam.exp_avg_sq.", "ema."}) {
      EXPECT_EQ(slice->Has(std::string(group) + "log_threshold"), a == Architecture::kJumpReLU) << group;
      if (a == Architecture::kJumpReLU) {
        EXPECT_EQ(slice->Entry(std::string(group) + "log_threshold")->shape, (std::vector<int64_t>{kN - 6}));
      }
    }

    auto whole = LoadCheckpoint(step);
    ASSERT_TRUE(whole.ok()) << whole.status();
    ASSERT_EQ(whole->raw.All().size(), tensors);
    ExpectTensorsEqual(whole->raw.All(), c.raw.All(), "params");
    ExpectTensorsEqual(whole->state.adam_exp_avg, c.state.adam_exp_avg, "adam.exp_avg");
    ExpectTensorsEqual(whole->state.adam_exp_avg_sq, c.state.adam_exp_avg_sq, "adam.exp_avg_sq");
    ExpectTensorsEqual(whole->state.ema_shadow, c.state.ema_shadow, "ema");
    EXPECT_TRUE(torch::equal(whole->state.tokens_since_fired, c.state.tokens_since_fired));
    EXPECT_EQ(ModelConfigToJson(whole->model), ModelConfigToJson(c.model));

    // A range across both slices (a resume into another layout).
    auto part = LoadCheckpoint(step, 4, 12);
    ASSERT_TRUE(part.ok()) << part.status();
    ExpectTensorsEqual(part->raw.All(), c.raw.Latents(4, 8).All(), "params [4, 12)");
    ExpectTensorsEqual(part->state.adam_exp_avg, SaeParameters::FromList(c.state.adam_exp_avg).Latents(4, 8).All(),
                       "adam.exp_avg [4, 12)");
    ExpectTensorsEqual(part->state.adam_exp_avg_sq,
                       SaeParameters::FromList(c.state.adam_exp_avg_sq).Latents(4, 8).All(), "adam.exp_avg_sq [4, 12)");
    ExpectTensorsEqual(part->state.ema_shadow, SaeParameters::FromList(c.state.ema_shadow).Latents(4, 8).All(),
                       "ema [4, 12)");

    // The published weights were merged whole (the SAELens export, with the thresholds).
    auto sae = LoadPublishedSae(step);
    ASSERT_TRUE(sae.ok()) << sae.status();
    EXPECT_EQ(sae->params.All().size(), tensors);
  }
}

TEST(Checkpoint, AJumpReLUSliceWithoutItsThresholdsIsRefusedByName) {
  TempDir dir;
  const CheckpointContents c = Contents(Architecture::kJumpReLU, nullptr);
  const std::string step = Write(dir / "run", c);
  const std::string file = step + "/trainer_state.safetensors";
  RemoveTensor(file, "adam.exp_avg.log_threshold");
  auto loaded = LoadCheckpoint(step);
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(file));
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("adam.exp_avg.log_threshold"));
}

// The trainer_state.json "model" object as checkpoints wrote it before the new fields existed.
void StripNewModelFields(const fs::path& step) {
  const fs::path path = step / "trainer_state.json";
  auto j = ReadJson(path);
  for (const char* field : {"k_initial", "k_schedule_steps", "threshold_decay", "inference_threshold",
                            "jumprelu_initial_threshold", "jumprelu_bandwidth", "l0_coefficient", "target_l0",
                            "matryoshka_prefixes"}) {
    ASSERT_TRUE(j["model"].contains(field)) << field;
    j["model"].erase(field);
  }
  testing::WriteFile(path.string(), j.dump(2));
}

// Moves a step directory's exports to the older layout: the sparsify export directly at
// <hookpoint>/, no sparsify run directory.
void ToOlderLayout(const fs::path& step, const std::string& hookpoint) {
  const fs::path exported = SparsifyExportDir(step.string(), hookpoint);
  const fs::path moved = step.parent_path() / "moved";
  fs::rename(exported, moved);
  fs::remove_all(step / "sparsify");
  fs::rename(moved, step / hookpoint);
  StripNewModelFields(step);
}

absl::StatusOr<CheckpointSummary> Inspect(const std::string& step, const std::string& archive) {
  auto st = PackDirectory(step, archive);
  if (!st.ok()) return st;
  return InspectCheckpointArchive(archive);
}

TEST(Checkpoint, TheOlderLayoutStillLoads) {
  // TopK, under two hookpoint names: "sparsify" is where the run directory now lies.
  for (const std::string hookpoint : {"sae", "sparsify"}) {
    SCOPED_TRACE(hookpoint);
    TempDir dir;
    CheckpointContents c = Contents(Architecture::kTopK, nullptr);
    c.hookpoint = hookpoint;
    c.export_saelens = false;  // so that only the older sparsify layout can be read
    const fs::path step = Write(dir / "run", c);
    ToOlderLayout(step, hookpoint);
    ASSERT_TRUE(fs::exists(step / hookpoint / "cfg.json"));
    auto sae = LoadPublishedSae(step.string());
    ASSERT_TRUE(sae.ok()) << sae.status();
    const auto got = sae->params.All(), want = c.published.All();
    ASSERT_EQ(got.size(), 4u);
    for (size_t i = 0; i < 4; ++i) ExpectClose(got[i], want[i], SaeParameters::Names()[i]);
    // The fields it lacks take their defaults.
    const ModelConfig defaults;
    EXPECT_EQ(sae->model.k_initial, 0);
    EXPECT_EQ(sae->model.threshold_decay, defaults.threshold_decay);
    EXPECT_EQ(sae->model.inference_threshold, defaults.inference_threshold);
    EXPECT_TRUE(sae->model.matryoshka_prefixes.empty());
    auto loaded = LoadCheckpoint(step.string());
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    ExpectTensorsEqual(loaded->raw.All(), c.raw.All(), "params");
    auto summary = Inspect(step.string(), dir / "old.tar");
    EXPECT_TRUE(summary.ok()) << summary.status();
  }

  // ReLU wrote "activation": "relu" there, which this reader still takes.
  TempDir dir;
  CheckpointContents c = Contents(Architecture::kReLU, nullptr);
  const fs::path step = Write(dir / "run", c);
  fs::create_directories(step / kHookpoint);
  testing::WriteFile((step / kHookpoint / "cfg.json").string(),
                     nlohmann::json{{"activation", "relu"}, {"num_latents", kN}, {"k", kK}, {"d_in", kD}}.dump());
  ASSERT_TRUE(WriteSafetensors((step / kHookpoint / "sae.safetensors").string(),
                               {{"encoder.weight", c.published.w_enc}, {"encoder.bias", c.published.b_enc / kScale},
                                {"W_dec", c.published.w_dec}, {"b_dec", c.published.b_pre / kScale}})
                  .ok());
  fs::remove_all(SaeLensExportDir(step.string()));
  StripNewModelFields(step);
  auto sae = LoadPublishedSae(step.string());
  ASSERT_TRUE(sae.ok()) << sae.status();
  EXPECT_EQ(sae->model.architecture, Architecture::kReLU);
  for (size_t i = 0; i < 4; ++i) ExpectClose(sae->params.All()[i], c.published.All()[i], SaeParameters::Names()[i]);
  auto summary = Inspect(step.string(), dir / "relu.tar");
  EXPECT_TRUE(summary.ok()) << summary.status();
}

TEST(Checkpoint, ModelConfigJsonRoundTripsEveryField) {
  for (const Architecture a : AllArchitectures()) {
    SCOPED_TRACE(Name(a));
    const ModelConfig m = Model(a);
    const nlohmann::json j = ModelConfigToJson(m);
    auto back = ModelConfigFromJson(j);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(ModelConfigToJson(*back), j);
    EXPECT_EQ(back->architecture, a);
    EXPECT_EQ(back->k_initial, m.k_initial);
    EXPECT_EQ(back->k_schedule_steps, m.k_schedule_steps);
    EXPECT_EQ(back->threshold_decay, m.threshold_decay);
    EXPECT_EQ(back->inference_threshold, m.inference_threshold);
    EXPECT_EQ(back->jumprelu_initial_threshold, m.jumprelu_initial_threshold);
    EXPECT_EQ(back->jumprelu_bandwidth, m.jumprelu_bandwidth);
    EXPECT_EQ(back->l0_coefficient, m.l0_coefficient);
    EXPECT_EQ(back->target_l0, m.target_l0);
    EXPECT_EQ(back->matryoshka_prefixes, m.matryoshka_prefixes);
  }
  // relu and jumprelu ignore k: absent, or larger than the dictionary, it is accepted.
  for (const Architecture a : {Architecture::kReLU, Architecture::kJumpReLU}) {
    nlohmann::json j = ModelConfigToJson(Model(a));
    j["k"] = kN + 100;
    EXPECT_TRUE(ModelConfigFromJson(j).ok()) << Name(a);
    j.erase("k");
    EXPECT_TRUE(ModelConfigFromJson(j).ok()) << Name(a);
  }
  nlohmann::json j = ModelConfigToJson(Model(Architecture::kBatchTopK));
  j.erase("k");
  EXPECT_THAT(std::string(ModelConfigFromJson(j).status().message()), HasSubstr("model.k: is required"));
}

TEST(InspectCheckpoint, EveryArchitecturesCheckpointPassesAndBrokenExportsAreNamed) {
  const EvalResult evaluation = Evaluation();
  for (const Architecture a : AllArchitectures()) {
    SCOPED_TRACE(Name(a));
    TempDir dir;
    const std::string step = Write(dir / "run", Contents(a, &evaluation));
    auto summary = Inspect(step, dir / "a.tar");
    ASSERT_TRUE(summary.ok()) << summary.status();
    EXPECT_EQ(summary->architecture, Name(a));
    EXPECT_EQ(summary->hookpoint, kHookpoint);
  }
  const std::string step_name = "step_000000007";

  // TopK: the sparsify run directory holds hookpoint directories and nothing else, each complete.
  {
    TempDir dir;
    const fs::path step = Write(dir / "run", Contents(Architecture::kTopK, nullptr));
    testing::WriteFile((step / "sparsify/notes.txt").string(), "x");
    auto summary = Inspect(step.string(), dir / "a.tar");
    ASSERT_FALSE(summary.ok());
    EXPECT_THAT(std::string(summary.status().message()),
                HasSubstr("entry '" + step_name + "/sparsify/notes.txt': is a file in the sparsify run directory"));
    fs::remove(step / "sparsify/notes.txt");
    fs::create_directories(step / "sparsify/other");
    testing::WriteFile((step / "sparsify/other/cfg.json").string(), "{}");
    summary = Inspect(step.string(), dir / "b.tar");
    ASSERT_FALSE(summary.ok());
    EXPECT_THAT(std::string(summary.status().message()),
                HasSubstr("missing entry '" + step_name + "/sparsify/other/sae.safetensors'"));
    fs::remove_all(step / "sparsify");
    summary = Inspect(step.string(), dir / "c.tar");
    ASSERT_FALSE(summary.ok());
    EXPECT_THAT(std::string(summary.status().message()),
                HasSubstr("missing entry '" + step_name + "/sparsify/" + kHookpoint + "/cfg.json'"));
  }
  // JumpReLU: the SAELens export is required, with its thresholds; the state slices hold
  // log_threshold.
  {
    TempDir dir;
    const fs::path step = Write(dir / "run", Contents(Architecture::kJumpReLU, nullptr));
    RemoveTensor(SaeLensExportDir(step.string()) + "/sae_weights.safetensors", "threshold");
    auto summary = Inspect(step.string(), dir / "a.tar");
    ASSERT_FALSE(summary.ok());
    EXPECT_THAT(std::string(summary.status().message()),
                HasSubstr("entry '" + step_name + "/saelens/sae_weights.safetensors': has no tensor \"threshold\""));
    fs::remove_all(SaeLensExportDir(step.string()));
    summary = Inspect(step.string(), dir / "b.tar");
    ASSERT_FALSE(summary.ok());
    EXPECT_THAT(std::string(summary.status().message()), HasSubstr("missing entry '" + step_name + "/saelens/cfg.json'"));
  }
  {
    TempDir dir;
    const fs::path step = Write(dir / "run", Contents(Architecture::kBatchTopK, nullptr));
    const fs::path cfg_path = fs::path(SaeLensExportDir(step.string())) / "cfg.json";
    auto cfg = ReadJson(cfg_path);
    cfg["architecture"] = "topk";
    testing::WriteFile(cfg_path.string(), cfg.dump());
    auto summary = Inspect(step.string(), dir / "a.tar");
    ASSERT_FALSE(summary.ok());
    EXPECT_THAT(std::string(summary.status().message()),
                HasSubstr("saelens/cfg.json': architecture: must be \"jumprelu\" for a batchtopk checkpoint"));
  }
  {
    TempDir dir;
    const fs::path step = Write(dir / "run", Contents(Architecture::kJumpReLU, nullptr));
    RemoveTensor((step / "trainer_state.safetensors").string(), "params.log_threshold");
    auto summary = Inspect(step.string(), dir / "a.tar");
    ASSERT_FALSE(summary.ok());
    EXPECT_THAT(std::string(summary.status().message()),
                HasSubstr("entry '" + step_name + "/trainer_state.safetensors': has no tensor \"params.log_threshold\""));
  }
}

}  // namespace
}  // namespace saegrid
