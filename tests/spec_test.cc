// The job specification as users write it: YAML/JSON parsing into saegrid.v1.JobSpec, rejection
// of unknown and ill-typed fields by name, validation, the shipped examples, and the `saegrid`
// binary's exit codes on bad input.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "spec/job_spec_loader.h"
#include "spec/memory_estimate.h"
#include "spec/train_config.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;

constexpr char kValid[] = R"(
model: {num_latents: 64, k: 4}
data: {synthetic: {num_samples: 4096, num_features: 32, d: 16}, batch_size: 128}
training: {total_tokens: 1024}
)";

std::string SpecError(const std::string& text) {
  auto spec = ParseJobSpec(text, "job.yaml");
  if (!spec.ok()) return std::string(spec.status().message());
  auto config = ToTrainConfig(*spec);
  return config.ok() ? std::string("OK") : std::string(config.status().message());
}

TEST(JobSpec, YamlAndJsonMapOntoTheEngineConfig) {
  auto spec = ParseJobSpec(kValid, "job.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto c = ToTrainConfig(*spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model.num_latents, 64);
  EXPECT_EQ(c->model.k, 4);
  EXPECT_TRUE(c->data.use_synthetic);
  EXPECT_EQ(c->data.synthetic.d, 16);
  EXPECT_EQ(c->training.total_tokens, 1024);
  EXPECT_DOUBLE_EQ(c->model.auxk_alpha, 1.0 / 32);  // default
  auto json = ParseJobSpec(R"({"model": {"k": 4}, "data": {"path": "/x"}, "training": {"total_tokens": 5}})", "job.json");
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(json->data().path(), "/x");
}

TEST(JobSpec, UnknownAndIllTypedFieldsAreNamed) {
  EXPECT_THAT(SpecError("model: {kk: 3}\n"), HasSubstr("model.kk: unknown field"));
  EXPECT_THAT(SpecError("modle: {k: 3}\n"), HasSubstr("modle: unknown field"));
  EXPECT_THAT(SpecError("model: {k: abc}\n"), HasSubstr("model.k"));
  EXPECT_THAT(SpecError("model: {k: 1.5}\n"), HasSubstr("model.k"));
  EXPECT_THAT(SpecError("optimizer: {lr: fast}\n"), HasSubstr("optimizer.lr"));
  EXPECT_THAT(SpecError("model: [1, 2]\n"), HasSubstr("model"));
  EXPECT_THAT(SpecError("model: {k: 1}\nmodel: {k: 2}\n"), HasSubstr("model"));
  EXPECT_THAT(SpecError("- just\n- a list\n"), HasSubstr("top level must be a mapping"));
  EXPECT_THAT(SpecError("model: {k: [unclosed\n"), HasSubstr("not valid YAML"));
}

TEST(JobSpec, BadValuesAreNamedWithTheRule) {
  const std::string base = kValid;
  EXPECT_THAT(SpecError(base + "optimizer: {lr: -1}\n"), HasSubstr("optimizer.lr: must be in"));
  EXPECT_THAT(SpecError("model: {architecture: gated}\ndata: {path: x}\ntraining: {total_tokens: 1}\n"),
              HasSubstr("model.architecture: must be one of \"topk\", \"batchtopk\", \"jumprelu\", \"matryoshka\", "
                        "\"relu\", got \"gated\""));
  EXPECT_THAT(SpecError("model: {num_latents: 8, k: 9}\ndata: {path: x}\ntraining: {total_tokens: 1}\n"),
              HasSubstr("model.k: (9) exceeds model.num_latents (8)"));
  EXPECT_THAT(SpecError("data: {path: x}\n"), HasSubstr("training.total_tokens: is required"));
  EXPECT_THAT(SpecError("data: {path: x, synthetic: {}}\ntraining: {total_tokens: 1}\n"),
              HasSubstr("set exactly one of data.path, data.synthetic, data.language_model and data.decoder_rows"));
  EXPECT_THAT(SpecError(base + "checkpoint: {hookpoint: ../escape}\n"), HasSubstr("checkpoint.hookpoint"));
  EXPECT_THAT(SpecError(base + "data: {path: x, batch_size: 0}\n"), HasSubstr("data"));
  EXPECT_THAT(SpecError("model: {num_latents: 99999999999}\ndata: {path: x}\ntraining: {total_tokens: 1}\n"),
              HasSubstr("model.num_latents: must be in"));
  EXPECT_THAT(SpecError(std::string(kValid) + "parallelism: {backend: mpi}\n"), HasSubstr("parallelism.backend"));
  EXPECT_THAT(SpecError("model: {normalize_inputs: rms}\ndata: {path: x}\ntraining: {total_tokens: 1}\n"),
              HasSubstr("model.normalize_inputs"));
  EXPECT_THAT(SpecError("model: {compute_dtype: fp16}\ndata: {path: x}\ntraining: {total_tokens: 1}\n"),
              HasSubstr("model.compute_dtype: must be \"float32\" or \"bfloat16\", got \"fp16\""));
  EXPECT_THAT(SpecError("model: {architecture: relu, compute_dtype: bfloat16}\ndata: {path: x}\n"
                        "training: {total_tokens: 1}\n"),
              HasSubstr("model.compute_dtype: bfloat16 only ranks latents (\"topk\", \"batchtopk\", \"matryoshka\"); "
                        "use float32 for \"relu\""));
  EXPECT_THAT(SpecError("model: {encoder_chunk_latents: -4}\ndata: {path: x}\ntraining: {total_tokens: 1}\n"),
              HasSubstr("model.encoder_chunk_latents: must be in"));
}

// Each architecture and its own fields, mapped from YAML.
TEST(JobSpec, EveryArchitectureMapsFromYaml) {
  const std::string rest = "data: {path: x}\ntraining: {total_tokens: 1}\n";
  auto map = [&](const std::string& model) -> TrainConfig {
    auto spec = ParseJobSpec("model: " + model + "\n" + rest, "job.yaml");
    EXPECT_TRUE(spec.ok()) << spec.status();
    if (!spec.ok()) return TrainConfig();
    auto c = ToTrainConfig(*spec);
    EXPECT_TRUE(c.ok()) << model << ": " << c.status();
    return c.ok() ? *c : TrainConfig();
  };
  // The default architecture; unset fields keep the engine's defaults.
  const TrainConfig d = map("{num_latents: 64}");
  const ModelConfig defaults;
  EXPECT_EQ(d.model.architecture, Architecture::kTopK);
  EXPECT_EQ(d.model.k_initial, 0);
  EXPECT_EQ(d.model.k_schedule_steps, 0);
  EXPECT_DOUBLE_EQ(d.model.threshold_decay, defaults.threshold_decay);
  EXPECT_DOUBLE_EQ(d.model.jumprelu_initial_threshold, defaults.jumprelu_initial_threshold);
  EXPECT_DOUBLE_EQ(d.model.jumprelu_bandwidth, defaults.jumprelu_bandwidth);
  EXPECT_DOUBLE_EQ(d.model.l0_coefficient, defaults.l0_coefficient);
  EXPECT_DOUBLE_EQ(d.model.target_l0, 0);
  EXPECT_TRUE(d.model.matryoshka_prefixes.empty());
  EXPECT_DOUBLE_EQ(d.model.inference_threshold, -1);  // fitted in training, never a spec field
  EXPECT_TRUE(d.checkpoint.export_saelens);

  const TrainConfig topk = map("{architecture: topk, num_latents: 64, k: 4, k_initial: 16, k_schedule_steps: 100, "
                               "compute_dtype: bfloat16}");
  EXPECT_EQ(topk.model.architecture, Architecture::kTopK);
  EXPECT_EQ(topk.model.k, 4);
  EXPECT_EQ(topk.model.k_initial, 16);
  EXPECT_EQ(topk.model.k_schedule_steps, 100);
  EXPECT_EQ(topk.model.compute_dtype, ComputeDtype::kBFloat16);

  const TrainConfig batch = map("{architecture: batchtopk, num_latents: 64, k: 4, threshold_decay: 0, "
                                "compute_dtype: bfloat16, k_initial: 8, k_schedule_steps: 10}");
  EXPECT_EQ(batch.model.architecture, Architecture::kBatchTopK);
  EXPECT_EQ(batch.model.k, 4);
  EXPECT_DOUBLE_EQ(batch.model.threshold_decay, 0);  // 0 is a value: the last batch's minimum
  EXPECT_EQ(batch.model.k_initial, 8);
  EXPECT_EQ(batch.model.compute_dtype, ComputeDtype::kBFloat16);

  const TrainConfig jump = map("{architecture: jumprelu, num_latents: 64, jumprelu_initial_threshold: 0.05, "
                               "jumprelu_bandwidth: 0.01, l0_coefficient: 0, target_l0: 12.5}");
  EXPECT_EQ(jump.model.architecture, Architecture::kJumpReLU);
  EXPECT_DOUBLE_EQ(jump.model.jumprelu_initial_threshold, 0.05);
  EXPECT_DOUBLE_EQ(jump.model.jumprelu_bandwidth, 0.01);
  EXPECT_DOUBLE_EQ(jump.model.l0_coefficient, 0);  // 0 is a value
  EXPECT_DOUBLE_EQ(jump.model.target_l0, 12.5);

  const TrainConfig mat = map("{architecture: matryoshka, num_latents: 64, k: 4, matryoshka_prefixes: [4, 16, 32], "
                              "threshold_decay: 0.9, compute_dtype: bfloat16}");
  EXPECT_EQ(mat.model.architecture, Architecture::kMatryoshka);
  EXPECT_EQ(mat.model.matryoshka_prefixes, (std::vector<int64_t>{4, 16, 32}));
  EXPECT_DOUBLE_EQ(mat.model.threshold_decay, 0.9);
  EXPECT_EQ(mat.model.compute_dtype, ComputeDtype::kBFloat16);

  const TrainConfig relu = map("{architecture: relu, num_latents: 64, l1_coefficient: 0.01}");
  EXPECT_EQ(relu.model.architecture, Architecture::kReLU);
  EXPECT_DOUBLE_EQ(relu.model.l1_coefficient, 0.01);

  // relu and jumprelu have no k: it is neither required nor held against num_latents (the
  // default k 32 exceeds these 8 latents), and a k left in the config is accepted.
  map("{architecture: relu, num_latents: 8}");
  map("{architecture: jumprelu, num_latents: 8}");
  map("{architecture: relu, num_latents: 8, k: 16}");
  map("{architecture: jumprelu, num_latents: 64, k: 4}");
  // topk alone may turn the SAELens export off (it also gets the sparsify layout).
  auto spec = ParseJobSpec("model: {architecture: topk, num_latents: 64, k: 4}\ncheckpoint: {export_saelens: false}\n" + rest,
                           "job.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto c = ToTrainConfig(*spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->checkpoint.export_saelens);
}

TEST(JobSpec, ArchitectureFieldsAreCheckedAndNamed) {
  const std::string rest = "data: {path: x}\ntraining: {total_tokens: 1}\n";
  auto error = [&](const std::string& model, const std::string& more = "") {
    return SpecError("model: " + model + "\n" + more + rest);
  };
  // The k schedule.
  EXPECT_THAT(error("{k: 8, k_initial: 4, k_schedule_steps: 10}"), HasSubstr("model.k_initial: must be >= model.k (8), got 4"));
  EXPECT_THAT(error("{k_initial: 16}"), HasSubstr("model.k_initial: must be >= model.k (32), got 16"));
  EXPECT_THAT(error("{num_latents: 64, k: 4, k_initial: 128, k_schedule_steps: 10}"),
              HasSubstr("model.k_initial: (128) exceeds model.num_latents (64)"));
  EXPECT_THAT(error("{k: 4, k_initial: -8, k_schedule_steps: 10}"), HasSubstr("model.k_initial: must be in [1, 65536], got -8"));
  EXPECT_THAT(error("{k: 4, k_schedule_steps: 10}"), HasSubstr("model.k_schedule_steps: requires model.k_initial"));
  EXPECT_THAT(error("{k: 4, k_initial: 8, k_schedule_steps: -1}"), HasSubstr("model.k_schedule_steps: must be in [0, "));
  EXPECT_THAT(error("{k: 4, k_initial: 8}"), HasSubstr("model.k_schedule_steps: is required with model.k_initial"));
  for (const char* arch : {"relu", "jumprelu"}) {
    SCOPED_TRACE(arch);
    EXPECT_THAT(error(absl::StrCat("{architecture: ", arch, ", k_initial: 64, k_schedule_steps: 10}")),
                HasSubstr(absl::StrCat("model.k_initial: applies only to the architectures that use k (\"topk\", "
                                       "\"batchtopk\", \"matryoshka\"), not \"", arch, "\"")));
    EXPECT_THAT(error(absl::StrCat("{architecture: ", arch, ", k_schedule_steps: 10}")),
                HasSubstr("model.k_schedule_steps: applies only to the architectures that use k"));
  }
  // The k architectures keep k <= num_latents.
  for (const char* arch : {"topk", "batchtopk", "matryoshka"}) {
    SCOPED_TRACE(arch);
    EXPECT_THAT(error(absl::StrCat("{architecture: ", arch, ", num_latents: 8, k: 9}")),
                HasSubstr("model.k: (9) exceeds model.num_latents (8)"));
  }
  // BatchTopK's and Matryoshka's threshold.
  EXPECT_THAT(error("{architecture: batchtopk, threshold_decay: 1}"), HasSubstr("model.threshold_decay: must be in [0, "));
  EXPECT_THAT(error("{architecture: batchtopk, threshold_decay: -0.5}"), HasSubstr("model.threshold_decay: must be in [0, "));
  // JumpReLU's fields.
  EXPECT_THAT(error("{architecture: jumprelu, jumprelu_bandwidth: 0}"), HasSubstr("model.jumprelu_bandwidth: must be > 0, got 0"));
  EXPECT_THAT(error("{architecture: jumprelu, jumprelu_bandwidth: -0.1}"), HasSubstr("model.jumprelu_bandwidth: must be > 0"));
  EXPECT_THAT(error("{architecture: jumprelu, jumprelu_bandwidth: .inf}"), HasSubstr("model.jumprelu_bandwidth: "));
  EXPECT_THAT(error("{architecture: jumprelu, jumprelu_initial_threshold: 0}"),
              HasSubstr("model.jumprelu_initial_threshold: must be > 0, got 0"));
  EXPECT_THAT(error("{architecture: jumprelu, jumprelu_initial_threshold: -1}"),
              HasSubstr("model.jumprelu_initial_threshold: must be > 0, got -1"));
  EXPECT_THAT(error("{architecture: jumprelu, l0_coefficient: -0.001}"), HasSubstr("model.l0_coefficient: must be in [0, "));
  EXPECT_THAT(error("{architecture: jumprelu, target_l0: -4}"), HasSubstr("model.target_l0: must be in [0, "));
  // Matryoshka's prefixes.
  EXPECT_THAT(error("{architecture: matryoshka, matryoshka_prefixes: [8, 0]}"),
              HasSubstr("model.matryoshka_prefixes[1]: must be > 0, got 0"));
  EXPECT_THAT(error("{architecture: matryoshka, matryoshka_prefixes: [-8, 16]}"),
              HasSubstr("model.matryoshka_prefixes[0]: must be > 0, got -8"));
  EXPECT_THAT(error("{architecture: matryoshka, matryoshka_prefixes: [8, 16, 16]}"),
              HasSubstr("model.matryoshka_prefixes[2]: (16) must be greater than model.matryoshka_prefixes[1] (16)"));
  EXPECT_THAT(error("{architecture: matryoshka, matryoshka_prefixes: [16, 8]}"),
              HasSubstr("model.matryoshka_prefixes[1]: (8) must be greater than model.matryoshka_prefixes[0] (16)"));
  EXPECT_THAT(error("{architecture: matryoshka, num_latents: 64, k: 4, matryoshka_prefixes: [16, 64]}"),
              HasSubstr("model.matryoshka_prefixes[1]: (64) must be < the number of latents (64, model.num_latents)"));
  EXPECT_THAT(error("{architecture: matryoshka, d_in: 16, expansion_factor: 2, k: 4, matryoshka_prefixes: [8, 40]}"),
              HasSubstr("model.matryoshka_prefixes[1]: (40) must be < the number of latents (32, model.d_in x "
                        "model.expansion_factor)"));
  EXPECT_THAT(SpecError("model: {architecture: matryoshka, k: 4, matryoshka_prefixes: [64]}\n"
                        "data: {synthetic: {d: 16}}\ntraining: {total_tokens: 1}\n"),
              HasSubstr("model.matryoshka_prefixes[0]: (64) must be < the number of latents (64, data.synthetic.d x "
                        "model.expansion_factor)"));
  // With activation files the number of latents is known only when the trainer reads them.
  EXPECT_EQ(error("{architecture: matryoshka, matryoshka_prefixes: [64, 1000000]}"), "OK");
  for (const char* arch : {"topk", "batchtopk", "jumprelu", "relu"}) {
    SCOPED_TRACE(arch);
    EXPECT_THAT(error(absl::StrCat("{architecture: ", arch, ", matryoshka_prefixes: [8]}")),
                HasSubstr(absl::StrCat("model.matryoshka_prefixes: applies only to model.architecture \"matryoshka\", "
                                       "not \"", arch, "\"")));
  }
  // bfloat16 only ranks.
  EXPECT_THAT(error("{architecture: jumprelu, compute_dtype: bfloat16}"),
              HasSubstr("model.compute_dtype: bfloat16 only ranks latents (\"topk\", \"batchtopk\", \"matryoshka\"); use "
                        "float32 for \"jumprelu\""));
  // The SAELens export is the only export of every architecture but topk.
  for (const char* arch : {"batchtopk", "jumprelu", "matryoshka", "relu"}) {
    SCOPED_TRACE(arch);
    EXPECT_THAT(error(absl::StrCat("{architecture: ", arch, "}"), "checkpoint: {export_saelens: false}\n"),
                HasSubstr(absl::StrCat("checkpoint.export_saelens: must be true for model.architecture \"", arch,
                                       "\" (it is the only export a ", arch, " SAE gets)")));
    EXPECT_EQ(error(absl::StrCat("{architecture: ", arch, "}"), "checkpoint: {export_saelens: true}\n"), "OK");
  }
  EXPECT_THAT(error("{architecture: batchtopk, threshold: 0.5}"), HasSubstr("model.threshold: unknown field"));
  EXPECT_THAT(error("{architecture: matryoshka, matryoshka_prefixes: [8, wide]}"), HasSubstr("model.matryoshka_prefixes"));
}

// The k architectures hold one encoder chunk at a time; the threshold ones are given room for a
// whole matrix (nothing but the dictionary bounds their active sets); the k schedule's start
// widens the selections.
TEST(MemoryEstimate, FollowsTheArchitecture) {
  auto estimate = [](const std::string& model) {
    auto spec = ParseJobSpec("model: " + model + "\ndata: {synthetic: {d: 256}, batch_size: 4096}\n"
                             "training: {total_tokens: 1}\n", "job.yaml");
    EXPECT_TRUE(spec.ok()) << spec.status();
    auto c = ToTrainConfig(*spec);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? EstimateRankMemory(*c) : MemoryEstimate();
  };
  const MemoryEstimate topk = estimate("{num_latents: 16384, k: 8}");
  const int64_t whole = int64_t{4096} * 16384 * 4;
  EXPECT_EQ(topk.encoder, int64_t{64} << 20);
  EXPECT_EQ(estimate("{architecture: batchtopk, num_latents: 16384, k: 8}").encoder, topk.encoder);
  EXPECT_EQ(estimate("{architecture: matryoshka, num_latents: 16384, k: 8}").encoder, topk.encoder);
  EXPECT_EQ(estimate("{architecture: jumprelu, num_latents: 16384}").encoder, 3 * whole);
  EXPECT_EQ(estimate("{architecture: relu, num_latents: 16384}").encoder, 3 * whole);
  EXPECT_GT(estimate("{num_latents: 16384, k: 8, k_initial: 64, k_schedule_steps: 10}").batches, topk.batches);
}

// The spec checks the spelling of a device (it is torch-free); whether the device exists is the
// trainer's check, on the machine that runs it (trainer_test).
TEST(JobSpec, DevicesBackendsAndKernelsAreChecked) {
  const std::string base = kValid;
  EXPECT_EQ(SpecError(base + "parallelism: {device: cuda}\n"), "OK");
  EXPECT_EQ(SpecError(base + "parallelism: {device: \"cuda:1\", kernels: portable}\n"), "OK");
  EXPECT_EQ(SpecError(base + "parallelism: {device: cuda, backend: nccl, shards: 2}\n"), "OK");
  EXPECT_THAT(SpecError(base + "parallelism: {device: \"cuda:x\"}\n"),
              HasSubstr("parallelism.device: must be \"cpu\", \"cuda\" or \"cuda:N\", got \"cuda:x\""));
  EXPECT_THAT(SpecError(base + "parallelism: {device: CUDA}\n"), HasSubstr("parallelism.device"));
  EXPECT_THAT(SpecError(base + "parallelism: {device: cuda, shards: 2}\n"),
              HasSubstr("parallelism.backend: a gang of cuda ranks needs nccl"));
  EXPECT_THAT(SpecError(base + "parallelism: {backend: nccl}\n"),
              HasSubstr("parallelism.backend: nccl moves CUDA tensors"));
  EXPECT_THAT(SpecError(base + "parallelism: {kernels: fast}\n"),
              HasSubstr("parallelism.kernels: must be \"auto\" or \"portable\", got \"fast\""));
  auto spec = ParseJobSpec(base + "parallelism: {device: \"cuda:0\", kernels: portable, deterministic: true}\n",
                           "job.yaml");
  ASSERT_TRUE(spec.ok());
  auto c = ToTrainConfig(*spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->parallelism.device, "cuda:0");
  EXPECT_EQ(c->parallelism.kernels, "portable");
  EXPECT_TRUE(c->parallelism.deterministic);
}

// A "billion laughs" document: ten levels of nine aliases each, 9^10 (3.5 billion) nodes expanded.
std::string AliasBomb() {
  std::string s = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n";
  for (int i = 1; i <= 10; ++i) {
    s += absl::StrCat("l", i, ": &l", i, " [");
    for (int j = 0; j < 9; ++j) absl::StrAppend(&s, j ? ", " : "", "*l", i - 1);
    s += "]\n";
  }
  return s;
}

TEST(JobSpec, AliasBombIsRefusedAfterBoundedWork) {
  const auto start = std::chrono::steady_clock::now();
  auto spec = ParseJobSpec(AliasBomb(), "bomb.yaml");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(std::string(spec.status().message()),
              HasSubstr(absl::StrCat("bomb.yaml: the document expands to more than ", kMaxJobSpecNodes, " nodes")));
  // Loosely: the bound stops the expansion after kMaxJobSpecNodes nodes (unbounded, ~22 s).
  EXPECT_LT(seconds, 2.0);
  // Aliases within the bound keep working.
  auto aliased = ParseJobSpec("shared: &four 4\nmodel: {num_latents: 64, k: *four}\n", "aliases.yaml");
  EXPECT_THAT(std::string(aliased.status().message()), HasSubstr("shared: unknown field"));
  auto ok = ParseJobSpec("model: {num_latents: &n 64, k: 4}\ndata: {synthetic: {num_samples: *n}}\n", "aliases.yaml");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->data().synthetic().num_samples(), 64);
}

TEST(JobSpec, OversizedDeepOrSpecialInputsAreRefused) {
  const std::string huge = std::string(kValid) + "# " + std::string(kMaxJobSpecBytes, 'x') + "\n";
  EXPECT_THAT(std::string(ParseJobSpec(huge, "huge.yaml").status().message()),
              HasSubstr(absl::StrCat("huge.yaml: ", huge.size(), " bytes, more than the ", kMaxJobSpecBytes)));
  testing::TempDir dir;
  testing::WriteFile(dir / "huge.yaml", huge);
  EXPECT_THAT(std::string(LoadJobSpecFile(dir / "huge.yaml").status().message()),
              HasSubstr(dir / "huge.yaml"));
  EXPECT_THAT(std::string(LoadJobSpecFile(dir.path().string()).status().message()), HasSubstr("not a regular file"));
  ASSERT_EQ(::mkfifo((dir / "fifo.yaml").c_str(), 0600), 0);
  EXPECT_THAT(std::string(LoadJobSpecFile(dir / "fifo.yaml").status().message()), HasSubstr("not a regular file"));
  // Bytes that are not UTF-8 (found by fuzz/job_spec_fuzzer.cc: they used to escape as an
  // uncaught exception and end the process).
  EXPECT_THAT(SpecError(std::string(kValid) + "name: \"a\xff\xff" "b\"\n"), HasSubstr("not UTF-8 text (byte "));
  EXPECT_THAT(SpecError("{\"model\": {\"k\": 4}, \"da\xc0\xafta\": 1}"), HasSubstr("not UTF-8"));
  const std::string surrogate = SpecError(std::string(kValid) + "name: \"\\ud800\"\n");
  EXPECT_THAT(surrogate, ::testing::AnyOf(HasSubstr("job.yaml: "), ::testing::Eq("OK")));
  const std::string deep = "model: " + std::string(kMaxJobSpecDepth + 5, '[') + std::string(kMaxJobSpecDepth + 5, ']');
  EXPECT_THAT(SpecError(deep), HasSubstr(absl::StrCat("nested more than ", kMaxJobSpecDepth, " levels")));
}

TEST(JobSpec, LanguageModelDataMapsAndItsErrorsAreNamed) {
  const std::string lm = "training: {total_tokens: 1024}\ndata:\n  language_model: ";
  auto spec = ParseJobSpec(lm + "{model_path: /m, tokens_path: /t.bin, hookpoint: h.8, context_length: 64, "
                                "exclude_token_ids: [50256], token_dtype: uint32, random_weights: {seed: 4}}\n"
                                "model: {normalize_inputs: dataset_constant}\n",
                           "job.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto c = ToTrainConfig(*spec);
  ASSERT_TRUE(c.ok()) << c.status();
  const auto& l = c->data.language_model;
  EXPECT_TRUE(c->data.uses_language_model());
  EXPECT_EQ(l.model_path, "/m");
  EXPECT_EQ(l.tokens_path, "/t.bin");
  EXPECT_EQ(l.hookpoint, "h.8");
  EXPECT_EQ(l.context_length, 64);
  EXPECT_EQ(l.token_dtype, "uint32");
  EXPECT_EQ(l.exclude_token_ids, std::vector<int64_t>{50256});
  EXPECT_TRUE(l.random_weights);
  EXPECT_EQ(l.random_weights_seed, 4u);
  EXPECT_FALSE(l.randomize_embeddings);
  EXPECT_EQ(c->model.normalize_inputs, InputNormalization::kDatasetConstant);
  // The sparsify layout's directory is the hookpoint.
  EXPECT_EQ(c->checkpoint.hookpoint, "h.8");

  EXPECT_THAT(SpecError(lm + "{tokens_path: /t, hookpoint: h.1}\n"), HasSubstr("data.language_model.model_path"));
  EXPECT_THAT(SpecError(lm + "{model_path: /m, hookpoint: h.1}\n"), HasSubstr("data.language_model.tokens_path"));
  EXPECT_THAT(SpecError(lm + "{model_path: /m, tokens_path: /t}\n"), HasSubstr("data.language_model.hookpoint"));
  EXPECT_THAT(SpecError(lm + "{model_path: /m, tokens_path: /t, hookpoint: a/b}\n"),
              HasSubstr("data.language_model.hookpoint"));
  EXPECT_THAT(SpecError(lm + "{model_path: /m, tokens_path: /t, hookpoint: h.1, token_dtype: int8}\n"),
              HasSubstr("data.language_model.token_dtype"));
  EXPECT_THAT(SpecError(lm + "{model_path: /m, tokens_path: /t, hookpoint: h.1, context_length: -4}\n"),
              HasSubstr("data.language_model.context_length"));
  EXPECT_THAT(SpecError(lm + "{model_path: /m, tokens_path: /t, hookpoint: h.1, exclude_token_ids: [3, -1]}\n"),
              HasSubstr("data.language_model.exclude_token_ids[1]"));
  EXPECT_THAT(SpecError(lm + "{model_path: /m, tokens_path: /t, hookpoint: h.1, sequences_per_forward: 0.5}\n"),
              HasSubstr("data.language_model.sequences_per_forward"));
  EXPECT_THAT(SpecError(lm + "{model_path: /m, tokens_path: /t, hookpoint: h.1, layers: 3}\n"),
              HasSubstr("data.language_model.layers: unknown field"));
  EXPECT_THAT(SpecError(lm + "{model_path: /m, tokens_path: /t, hookpoint: h.1}\n  path: /x\n"),
              HasSubstr("set exactly one of data.path, data.synthetic, data.language_model and data.decoder_rows"));
}

TEST(JobSpec, GroundTruthPathIsAcceptedForActivationFilesOnly) {
  auto spec = ParseJobSpec("data: {path: /x}\ntraining: {total_tokens: 8}\nevaluation: {ground_truth_path: /t.safetensors}\n",
                           "job.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto c = ToTrainConfig(*spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->evaluation.ground_truth_path, "/t.safetensors");
  EXPECT_THAT(SpecError(std::string(kValid) + "evaluation: {ground_truth_path: /t.safetensors}\n"),
              HasSubstr("evaluation.ground_truth_path: data.synthetic has its own ground truth"));
}

TEST(JobSpec, EvaluationsAreNamedCheckedAndMapped) {
  const std::string lm =
      "data:\n  language_model: {model_path: /m, tokens_path: /t, hookpoint: h.1}\ntraining: {total_tokens: 8}\n";
  auto spec = ParseJobSpec(lm + "evaluation:\n  run: [downstream_loss, n2g, shrinkage]\n  at_checkpoints: true\n"
                                "  seed: 4\n  language_model: {sequences: 8, ablation_horizon: 4, context_before: 0}\n"
                                "  shrinkage_iterations: 50\n",
                           "job.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto c = ToTrainConfig(*spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->evaluation.run, (std::vector<std::string>{"downstream_loss", "n2g", "shrinkage"}));
  EXPECT_TRUE(c->evaluation.at_checkpoints);
  EXPECT_EQ(c->evaluation.seed, 4u);
  EXPECT_EQ(c->evaluation.language_model.sequences, 8);
  EXPECT_EQ(c->evaluation.language_model.ablation_horizon, 4);
  EXPECT_EQ(c->evaluation.language_model.context_before, 0);
  EXPECT_EQ(c->evaluation.language_model.context_after, 4);  // the default
  EXPECT_EQ(c->evaluation.shrinkage_iterations, 50);
  EXPECT_THAT(SpecError(lm + "evaluation: {run: [vibes]}\n"), HasSubstr("evaluation.run[0]: unknown evaluation \"vibes\""));
  EXPECT_THAT(SpecError(lm + "evaluation: {run: [n2g, n2g]}\n"), HasSubstr("evaluation.run[1]: \"n2g\" is listed twice"));
  EXPECT_THAT(SpecError(std::string(kValid) + "evaluation: {run: [downstream_loss]}\n"),
              HasSubstr("evaluation.run[0]: downstream_loss needs data.language_model"));
  EXPECT_THAT(SpecError(lm + "evaluation: {run: [probes]}\n"), HasSubstr("evaluation.probes.labels_path: is required"));
  EXPECT_THAT(SpecError(lm + "evaluation: {run: [sae_comparison]}\n"),
              HasSubstr("evaluation.compare_checkpoint: is required by sae_comparison"));
  EXPECT_THAT(SpecError(lm + "evaluation: {language_model: {sequences: -1}}\n"),
              HasSubstr("evaluation.language_model.sequences"));
  EXPECT_THAT(SpecError(lm + "evaluation: {novel_threshold: 2}\n"), HasSubstr("evaluation.novel_threshold"));
  EXPECT_THAT(SpecError(lm + "evaluation: {probes: {task_names: [a, \"\"]}}\n"),
              HasSubstr("evaluation.probes.task_names[1]: is empty"));
  // Synthetic data labels its own probes; a meta-SAE's data is another checkpoint's decoder.
  EXPECT_EQ(SpecError(std::string(kValid) + "evaluation: {run: [probes, shrinkage]}\n"), "OK");
  auto meta = ParseJobSpec("data: {decoder_rows: /runs/big}\ntraining: {total_tokens: 8}\n", "job.yaml");
  ASSERT_TRUE(meta.ok()) << meta.status();
  auto mc = ToTrainConfig(*meta);
  ASSERT_TRUE(mc.ok()) << mc.status();
  EXPECT_EQ(mc->data.decoder_rows, "/runs/big");
}

TEST(JobSpec, ShippedExamplesAreValid) {
  const std::filesystem::path examples = std::filesystem::path(SAEGRID_SOURCE_DIR) / "examples";
  int count = 0;
  for (const auto& e : std::filesystem::directory_iterator(examples)) {
    SCOPED_TRACE(e.path().string());
    auto spec = LoadJobSpecFile(e.path().string());
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_TRUE(ToTrainConfig(*spec).ok());
    ++count;
  }
  EXPECT_GE(count, 2);
}

int RunCli(const std::string& args, const std::string& log) {
  const std::string cmd = std::string(SAEGRID_BINARY) + " " + args + " > " + log + " 2>&1";
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(SaegridCli, BadConfigExitsTwoNamingTheField) {
  testing::TempDir dir;
  testing::WriteFile(dir / "bad.yaml", "model: {k: 4, widht: 3}\n");
  EXPECT_EQ(RunCli("train --config " + (dir / "bad.yaml"), dir / "log"), 2);
  EXPECT_THAT(testing::ReadFile(dir / "log"), HasSubstr("model.widht: unknown field"));
  EXPECT_EQ(RunCli("train --config " + (dir / "missing.yaml"), dir / "log"), 2);
  EXPECT_THAT(testing::ReadFile(dir / "log"), HasSubstr("missing.yaml"));
  EXPECT_EQ(RunCli("train", dir / "log"), 2);
  EXPECT_EQ(RunCli("frobnicate", dir / "log"), 2);
  // Data that does not exist is named too.
  testing::WriteFile(dir / "nodata.yaml", "data: {path: " + (dir / "nope") + "}\ntraining: {total_tokens: 10}\n");
  EXPECT_EQ(RunCli("train --config " + (dir / "nodata.yaml"), dir / "log"), 2);
  EXPECT_THAT(testing::ReadFile(dir / "log"), HasSubstr("nope does not exist"));
}

TEST(SaegridCli, TrainsWritesCheckpointAndEvaluation) {
  testing::TempDir dir;
  testing::WriteFile(dir / "job.yaml", std::string(kValid) + "checkpoint: {output_dir: " + (dir / "out") + "}\n");
  ASSERT_EQ(RunCli("train --config " + (dir / "job.yaml") + " --threads 1", dir / "log"), 0)
      << testing::ReadFile(dir / "log");
  const std::string log = testing::ReadFile(dir / "log");
  EXPECT_THAT(log, HasSubstr("MMCS"));
  EXPECT_THAT(log, HasSubstr("FVU"));
  const std::string latest = testing::ReadFile(dir / "out/checkpoints/LATEST");
  const std::string step = dir / ("out/checkpoints/" + latest.substr(0, latest.size() - 1));
  // The sparsify run directory holds only hookpoint directories; the SAELens export is beside it.
  EXPECT_TRUE(std::filesystem::exists(step + "/sparsify/sae/sae.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(step + "/saelens/cfg.json"));
  EXPECT_TRUE(std::filesystem::exists(step + "/evaluation.json"));
}

}  // namespace
}  // namespace saegrid
