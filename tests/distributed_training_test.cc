// Sharded and data-parallel training over real processes (the saegrid binary, which execs
// saegrid-train; Gloo over loopback): every layout in exact mode reproduces the single-process
// run, the capacity factor behaves as section D.1 says, checkpoints resume across layouts, a lost
// rank ends the gang with an error that names it, the metrics file is saegrid.v1.RankEvent lines,
// and config errors, allocation failures and failed restores end with their own exit codes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/exit_code.h"
#include "engine/distributed/rendezvous.h"
#include "engine/safetensors.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "saegrid/v1/rank_event.pb.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kSteps = 20;
constexpr int kBatch = 512;

// Skewed synthetic data (feature probabilities decay by lambda), 1024 latents, k = 8, and a short
// dead threshold so that AuxK is active within the 20 steps. log_every_steps 1: every step reads
// its figures and writes its metrics line, which the layouts' comparisons need.
std::string Config(const std::string& parallelism, const std::string& architecture = "topk") {
  return "name: distributed\n"
         "model: {architecture: " + architecture + ", num_latents: 1024, k: 8, dead_tokens_threshold: 1024}\n"
         "optimizer: {lr: 0.003, grad_clip_norm: 1.0}\n"
         "data:\n"
         "  synthetic: {num_samples: 16384, num_features: 128, d: 64, avg_active_features: 5, lambda_decay: 0.97}\n"
         "  batch_size: 512\n"
         "  block_rows: 256\n"
         "training: {total_tokens: " + std::to_string(kSteps * kBatch) + ", log_every_steps: 1}\n" +
         (parallelism.empty() ? "" : "parallelism: " + parallelism + "\n");
}

// One --metrics-jsonl line; unknown fields are errors here, so a record the proto does not
// describe fails the test.
std::optional<v1::RankEvent> ParseRankEvent(const std::string& line) {
  v1::RankEvent event;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  if (!google::protobuf::util::JsonStringToMessage(line, &event, options).ok()) return std::nullopt;
  return event;
}

struct RunResult {
  int exit_code = -1;
  std::vector<v1::RankEvent> events;  // every line of the metrics file, in order
  std::vector<v1::TrainingStep> steps;  // by step order
  std::vector<v1::CheckpointWritten> checkpoints;
  std::optional<v1::Evaluation> evaluation_record;
  std::optional<v1::RankFailure> failure;
  nlohmann::json evaluation;  // evaluation_record's evaluation_json
  int unparsed_lines = 0;
  std::string output_dir;
  std::string log;
};

void ReadMetricsFile(const std::string& path, RunResult* r) {
  for (const auto& line : testing::ReadLines(path)) {
    auto event = ParseRankEvent(line);
    if (!event) {
      ++r->unparsed_lines;
      ADD_FAILURE() << "not a saegrid.v1.RankEvent: " << line;
      continue;
    }
    r->events.push_back(*event);
    if (event->has_step()) r->steps.push_back(event->step());
    if (event->has_checkpoint()) r->checkpoints.push_back(event->checkpoint());
    if (event->has_evaluation()) {
      r->evaluation_record = event->evaluation();
      r->evaluation = nlohmann::json::parse(event->evaluation().evaluation_json(), nullptr, false);
    }
    if (event->has_failure()) r->failure = event->failure();
  }
}

class DistributedTraining : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new testing::TempDir();
    single_ = new RunResult(Run("single", "", {}));
  }
  static void TearDownTestSuite() {
    delete single_;
    delete root_;
  }

  // Runs `saegrid train` (which starts the gang's ranks itself when the config asks for several).
  static RunResult Run(const std::string& name, const std::string& parallelism, std::vector<std::string> extra,
                       const std::string& output_dir = "", const std::string& architecture = "topk") {
    RunResult r;
    r.output_dir = output_dir.empty() ? *root_ / name : output_dir;
    const std::string config = *root_ / (name + ".yaml");
    testing::WriteFile(config, Config(parallelism, architecture));
    const std::string metrics = *root_ / (name + ".jsonl");
    std::vector<std::string> argv = {SAEGRID_BINARY, "train", "--config", config, "--output-dir", r.output_dir,
                                     "--metrics-jsonl", metrics, "--quiet"};
    if (parallelism.empty()) argv.insert(argv.end(), {"--threads", "1"});
    argv.insert(argv.end(), extra.begin(), extra.end());
    const std::string log = *root_ / (name + ".log");
    r.exit_code = testing::RunProcess(argv, log, 300);
    r.log = testing::ReadFile(log);
    ReadMetricsFile(metrics, &r);
    return r;
  }

  static std::map<std::string, torch::Tensor> Weights(const RunResult& r, int step = kSteps) {
    char name[32];
    std::snprintf(name, sizeof(name), "step_%09d", step);
    auto file = SafetensorsFile::Open(r.output_dir + "/checkpoints/" + name + "/sparsify/sae/sae.safetensors");
    EXPECT_TRUE(file.ok()) << file.status();
    std::map<std::string, torch::Tensor> out;
    if (!file.ok()) return out;
    for (const char* t : {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}) out[t] = file->Get(t)->clone();
    return out;
  }

  // Per-step losses of `r` against the single-process run (its steps [first, first + count)).
  static void ExpectSameLosses(const RunResult& r, int first_step = 1) {
    ASSERT_EQ(r.exit_code, 0) << r.log;
    ASSERT_EQ(static_cast<int>(r.steps.size()), kSteps - first_step + 1) << r.log;
    for (const auto& s : r.steps) {
      const int step = static_cast<int>(s.progress().step());
      const auto& want = single_->steps.at(step - 1).progress();
      const std::pair<const char*, std::pair<double, double>> fields[] = {
          {"loss", {s.progress().loss(), want.loss()}},
          {"fvu", {s.progress().fvu(), want.fvu()}},
          {"auxk_loss", {s.progress().auxk_loss(), want.auxk_loss()}}};
      for (const auto& [field, values] : fields) {
        const auto [a, b] = values;
        EXPECT_LE(std::abs(a - b), 1e-5 * std::max(std::abs(b), 1e-3)) << field << " at step " << step;
      }
      EXPECT_EQ(s.progress().num_dead(), want.num_dead()) << "step " << step;
    }
  }

  static void ExpectSameWeights(const RunResult& r) {
    const auto got = Weights(r), want = Weights(*single_);
    ASSERT_EQ(got.size(), 4u);
    for (const auto& [name, tensor] : want) {
      ASSERT_EQ(got.at(name).sizes(), tensor.sizes()) << name;
      EXPECT_LE(testing::RelativeError(got.at(name), tensor), 1e-5) << name;
    }
  }

  static testing::TempDir* root_;
  static RunResult* single_;
};

testing::TempDir* DistributedTraining::root_ = nullptr;
RunResult* DistributedTraining::single_ = nullptr;

TEST_F(DistributedTraining, SingleProcessRunExercisesAuxK) {
  ASSERT_EQ(single_->exit_code, 0) << single_->log;
  ASSERT_EQ(static_cast<int>(single_->steps.size()), kSteps);
  int with_aux = 0;
  for (const auto& s : single_->steps) with_aux += s.progress().auxk_loss() > 0 ? 1 : 0;
  EXPECT_GT(with_aux, 0) << "no step had dead latents: the AuxK exchange would go untested";
}

TEST_F(DistributedTraining, TwoShardsExactMatchesSingleProcess) {
  const auto r = Run("s2", "{shards: 2, exact: true}", {});
  ExpectSameLosses(r);
  ExpectSameWeights(r);
  EXPECT_EQ(r.evaluation["sharding"]["shards"], 2);
}

TEST_F(DistributedTraining, TwoReplicasMatchSingleProcess) {
  const auto r = Run("r2", "{replicas: 2}", {});
  ExpectSameLosses(r);
  ExpectSameWeights(r);
}

TEST_F(DistributedTraining, TwoShardsTimesTwoReplicasExactMatchSingleProcess) {
  const auto r = Run("s2r2", "{shards: 2, replicas: 2, exact: true}", {});
  ExpectSameLosses(r);
  ExpectSameWeights(r);
}

TEST_F(DistributedTraining, CapacityFactorTwoIsExactForTwoShards) {
  const auto r = Run("s2c2", "{shards: 2, capacity_factor: 2}", {});
  ExpectSameLosses(r);
  EXPECT_EQ(r.evaluation["sharding"]["candidates_per_shard"], 8);  // k_in = min(ceil(2 * 8 / 2), 8)
  EXPECT_EQ(r.evaluation["sharding"]["training_overflow_tokens"], 0);
}

TEST_F(DistributedTraining, FourShardsWithCapacityTwoOverflowButStayClose) {
  const auto r = Run("s4c2", "{shards: 4, capacity_factor: 2}", {});
  ASSERT_EQ(r.exit_code, 0) << r.log;
  EXPECT_EQ(r.evaluation["sharding"]["candidates_per_shard"], 4);  // ceil(2 * 8 / 4)
  EXPECT_GT(r.evaluation["sharding"]["training_overflow_tokens"].get<int64_t>(), 0);
  EXPECT_GT(r.evaluation["sharding"]["eval_overflow_rate"].get<double>(), 0);
  int64_t per_step = 0, truncated = 0;
  for (const auto& s : r.steps) {
    per_step += s.overflow_tokens();
    truncated += s.truncated_tokens();
    EXPECT_LE(s.truncated_tokens(), s.overflow_tokens()) << "a truncated selection was possibly truncated";
  }
  EXPECT_EQ(per_step, r.evaluation["sharding"]["training_overflow_tokens"].get<int64_t>());
  EXPECT_EQ(truncated, r.evaluation["sharding"]["training_truncated_tokens"].get<int64_t>());
  EXPECT_LE(r.evaluation["sharding"]["eval_truncated_rate"].get<double>(),
            r.evaluation["sharding"]["eval_overflow_rate"].get<double>());
  const double fvu = r.evaluation["fvu"].get<double>(), exact = single_->evaluation["fvu"].get<double>();
  EXPECT_LE(std::abs(fvu - exact), 0.02 * exact) << "capacity factor 2 FVU " << fvu << " vs exact " << exact;
}

// BatchTopK's cut over the batch, sharded in exact mode, is the single-process selection: the
// same losses step by step, the same fitted inference threshold and the same exported SAE.
TEST_F(DistributedTraining, BatchTopKTwoShardsExactMatchesSingleProcess) {
  const auto single = Run("batchtopk_1", "", {}, "", "batchtopk");
  const auto sharded = Run("batchtopk_s2", "{shards: 2, exact: true}", {}, "", "batchtopk");
  ASSERT_EQ(single.exit_code, 0) << single.log;
  ASSERT_EQ(sharded.exit_code, 0) << sharded.log;
  ASSERT_EQ(sharded.steps.size(), single.steps.size());
  for (size_t i = 0; i < single.steps.size(); ++i) {
    const auto& a = sharded.steps[i];
    const auto& b = single.steps[i];
    EXPECT_NEAR(a.progress().loss(), b.progress().loss(), 1e-5 * b.progress().loss()) << "step " << i + 1;
    EXPECT_NEAR(a.progress().fvu(), b.progress().fvu(), 1e-5 * b.progress().fvu()) << "step " << i + 1;
    EXPECT_EQ(a.progress().l0(), b.progress().l0()) << "step " << i + 1;
    EXPECT_NEAR(a.inference_threshold(), b.inference_threshold(), 1e-5 * b.inference_threshold());
    EXPECT_EQ(a.truncated_tokens(), 0);
  }
  EXPECT_GT(single.steps.back().inference_threshold(), 0);
  char name[32];
  std::snprintf(name, sizeof(name), "step_%09d", kSteps);
  auto read = [&](const RunResult& r) {
    return SafetensorsFile::Open(r.output_dir + "/checkpoints/" + name + "/saelens/sae_weights.safetensors");
  };
  auto got = read(sharded), want = read(single);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(want.ok()) << want.status();
  for (const char* t : {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}) {
    EXPECT_LE(testing::RelativeError(*got->Get(t), *want->Get(t)), 1e-5) << t;
  }
}

TEST_F(DistributedTraining, UnshardedCheckpointResumesSharded) {
  const std::string dir = *root_ / "resume_into_sharded";
  const auto first = Run("resume_a1", "", {"--total-tokens", std::to_string(10 * kBatch)}, dir);
  ASSERT_EQ(first.exit_code, 0) << first.log;
  const auto second = Run("resume_a2", "{shards: 2, exact: true}", {}, dir);
  ExpectSameLosses(second, 11);
  ExpectSameWeights(second);
}

TEST_F(DistributedTraining, ShardedReplicatedCheckpointResumesUnsharded) {
  const std::string dir = *root_ / "resume_into_single";
  const auto first = Run("resume_b1", "{shards: 2, replicas: 2, exact: true}",
                         {"--total-tokens", std::to_string(10 * kBatch)}, dir);
  ASSERT_EQ(first.exit_code, 0) << first.log;
  EXPECT_TRUE(std::filesystem::exists(dir + "/checkpoints/step_000000010/trainer_state.shard-00001-of-00002.safetensors"));
  const auto second = Run("resume_b2", "", {}, dir);
  ExpectSameLosses(second, 11);
  ExpectSameWeights(second);
}

// Service workers share no output directory: rank 0 gathers every shard's state and writes the
// checkpoint alone, and it resumes exactly like one written by the shards themselves.
TEST_F(DistributedTraining, CheckpointGatheredToRankZeroResumes) {
  const std::string dir = *root_ / "resume_gathered";
  const auto first = Run("resume_c1", "{shards: 2, replicas: 2, exact: true}",
                         {"--total-tokens", std::to_string(10 * kBatch), "--gather-checkpoints"}, dir);
  ASSERT_EQ(first.exit_code, 0) << first.log;
  EXPECT_TRUE(std::filesystem::exists(dir + "/checkpoints/step_000000010/trainer_state.shard-00001-of-00002.safetensors"));
  const auto second = Run("resume_c2", "{shards: 2, exact: true}", {"--gather-checkpoints"}, dir);
  ExpectSameLosses(second, 11);
  ExpectSameWeights(second);
}

TEST_F(DistributedTraining, KilledRankEndsEveryOtherRankWithinTheTimeout) {
  const std::string config = *root_ / "kill.yaml";
  testing::WriteFile(config, Config("{shards: 2, replicas: 2, exact: true, timeout_seconds: 20}"));
  const int port = FindFreeLoopbackPort();
  const std::string metrics = *root_ / "kill.jsonl";
  std::vector<pid_t> ranks;
  for (int rank = 0; rank < 4; ++rank) {
    std::vector<std::string> argv = {SAEGRID_BINARY, "train", "--config", config, "--output-dir", *root_ / "kill",
                                     "--total-tokens", "100000000", "--threads", "1", "--quiet",
                                     "--rank", std::to_string(rank), "--world-size", "4",
                                     "--rendezvous", "127.0.0.1:" + std::to_string(port)};
    if (rank == 0) argv.insert(argv.end(), {"--metrics-jsonl", metrics});
    ranks.push_back(testing::StartProcess(argv, *root_ / ("kill" + std::to_string(rank) + ".log")));
  }
  // Mid-run: once rank 0 has logged a few steps.
  const auto wait_until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (testing::ReadLines(metrics).size() < 3 && std::chrono::steady_clock::now() < wait_until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GE(testing::ReadLines(metrics).size(), 3u) << testing::ReadFile(*root_ / "kill0.log");
  kill(ranks[2], SIGKILL);
  const auto killed_at = std::chrono::steady_clock::now();
  EXPECT_EQ(testing::WaitProcess(ranks[2], 10), 128 + SIGKILL);
  for (int rank : {0, 1, 3}) {
    const auto code = testing::WaitProcess(ranks[rank], 20 + 10);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
    const std::string log = testing::ReadFile(*root_ / ("kill" + std::to_string(rank) + ".log"));
    ASSERT_TRUE(code.has_value()) << "rank " << rank << " still running after the timeout";
    EXPECT_EQ(*code, 3) << log;
    EXPECT_LT(seconds, 20) << "rank " << rank;
    EXPECT_THAT(log, HasSubstr("lost rank 2")) << "rank " << rank;
  }
}

TEST_F(DistributedTraining, LayoutErrorsAreNamed) {
  // 1024 latents do not split into 3 shards.
  auto r = Run("bad_shards", "{shards: 3}", {});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.log, HasSubstr("model.num_latents"));
  // The world size must be shards x replicas.
  const std::string config = *root_ / "bad_world.yaml";
  testing::WriteFile(config, Config("{shards: 2}"));
  const std::string log = *root_ / "bad_world.log";
  EXPECT_EQ(testing::RunProcess({SAEGRID_BINARY, "train", "--config", config, "--rank", "0", "--world-size", "3",
                                 "--rendezvous", "127.0.0.1:" + std::to_string(FindFreeLoopbackPort())},
                                log, 60),
            2);
  EXPECT_THAT(testing::ReadFile(log), HasSubstr("parallelism.shards x parallelism.replicas"));
  r = Run("bad_local", "{shards: 2}", {"--local-ranks", "3"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.log, HasSubstr("--local-ranks 3"));
}

// The metrics file read the way the worker reads it: every line a RankEvent, and the records
// agree with each other and with the checkpoint on disk.
TEST_F(DistributedTraining, MetricsFileLinesAreRankEvents) {
  const RunResult& r = *single_;
  ASSERT_EQ(r.exit_code, 0) << r.log;
  EXPECT_EQ(r.unparsed_lines, 0);
  ASSERT_EQ(static_cast<int>(r.steps.size()), kSteps);
  for (int i = 0; i < kSteps; ++i) {
    const auto& p = r.steps[i].progress();
    EXPECT_EQ(p.step(), i + 1);
    EXPECT_EQ(p.total_steps(), kSteps);
    EXPECT_EQ(p.tokens(), int64_t{i + 1} * kBatch);
    EXPECT_GT(p.step_seconds(), 0);
    EXPECT_GT(p.fvu(), 0);
    EXPECT_GT(r.steps[i].profile().encoder(), 0) << "step " << i + 1;
  }
  ASSERT_FALSE(r.checkpoints.empty());
  const v1::CheckpointWritten& last = r.checkpoints.back();
  EXPECT_EQ(last.step(), kSteps);
  EXPECT_EQ(last.tokens(), int64_t{kSteps} * kBatch);
  EXPECT_GE(last.seconds(), 0);
  int64_t bytes = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(last.directory())) {
    if (e.is_regular_file()) bytes += static_cast<int64_t>(e.file_size());
  }
  EXPECT_GT(bytes, 0);
  EXPECT_EQ(last.bytes(), bytes);
  ASSERT_TRUE(r.evaluation_record.has_value());
  EXPECT_EQ(r.evaluation_record->step(), kSteps);
  ASSERT_TRUE(r.evaluation.is_object()) << r.evaluation_record->evaluation_json();
  EXPECT_DOUBLE_EQ(r.evaluation_record->fvu(), r.evaluation["fvu"].get<double>());
  EXPECT_DOUBLE_EQ(r.evaluation_record->mse(), r.evaluation["mse"].get<double>());
  EXPECT_DOUBLE_EQ(r.evaluation_record->l0(), r.evaluation["l0"].get<double>());
  EXPECT_DOUBLE_EQ(r.evaluation_record->dead_fraction(), r.evaluation["dead_fraction"].get<double>());
  EXPECT_FALSE(r.failure.has_value());
}

// Runs `saegrid train ARGS --metrics-jsonl FILE --quiet` (under an address-space limit of
// `limit_kib` when not 0) and reads the metrics file.
RunResult RunTrain(const std::string& name, std::vector<std::string> args, int64_t limit_kib = 0) {
  testing::TempDir dir;
  RunResult r;
  const std::string metrics = dir / (name + ".jsonl"), log = dir / (name + ".log");
  args.insert(args.begin(), {SAEGRID_BINARY, "train"});
  args.insert(args.end(), {"--metrics-jsonl", metrics, "--quiet"});
  if (limit_kib > 0) {
    std::string command = "ulimit -v " + std::to_string(limit_kib) + " && exec";
    for (const auto& a : args) command += " '" + a + "'";
    args = {"/bin/sh", "-c", command};
  }
  r.exit_code = testing::RunProcess(args, log, 120);
  r.log = testing::ReadFile(log);
  ReadMetricsFile(metrics, &r);
  return r;
}

void ExpectFailureRecord(const RunResult& r, v1::TrainExitCode code, const std::string& substring) {
  ASSERT_TRUE(r.failure.has_value()) << r.log;
  EXPECT_EQ(r.failure->exit_code(), code) << r.failure->DebugString();
  EXPECT_THAT(r.failure->message(), HasSubstr(substring));
  EXPECT_EQ(r.failure->message().find('\n'), std::string::npos) << r.failure->message();
  ASSERT_FALSE(r.events.empty());
  EXPECT_TRUE(r.events.back().has_failure()) << "the failure is the last record";
}

// The worker's path: the job as proto JSON. A data.path that does not exist on this machine is
// a configuration error (exit 2, not retried), and unknown fields are refused by name.
TEST_F(DistributedTraining, JobProtoJsonErrorsExitTwoNamingTheField) {
  const std::string job = *root_ / "nodata.json";
  testing::WriteFile(job, "{\"data\": {\"path\": \"" + (*root_ / "no-such-dir") +
                              "\"}, \"training\": {\"total_tokens\": \"1024\"}}");
  auto r = RunTrain("nodata", {"--job-proto-json", job});
  EXPECT_EQ(r.exit_code, ToInt(TrainExitCode::kInvalidConfig)) << r.log;
  EXPECT_THAT(r.log, HasSubstr("data.path"));
  ExpectFailureRecord(r, v1::TRAIN_EXIT_INVALID_CONFIG, "data.path");

  testing::WriteFile(job, "{\"model\": {\"num_latentz\": 64}, \"data\": {\"synthetic\": {}}}");
  r = RunTrain("unknown_field", {"--job-proto-json", job});
  EXPECT_EQ(r.exit_code, ToInt(TrainExitCode::kInvalidConfig)) << r.log;
  EXPECT_THAT(r.log, HasSubstr("num_latentz"));
  ExpectFailureRecord(r, v1::TRAIN_EXIT_INVALID_CONFIG, "num_latentz");
}

// 2^22 latents of width 2^14 pass every per-field bound, but the encoder weight alone is
// 256 GiB: its allocation fails at once (the kernel refuses a request beyond RAM + swap, and the
// address-space limit makes sure the test cannot take the machine's memory whatever the
// overcommit setting). The run ends with exit 5 and one line, not a LibTorch abort.
TEST_F(DistributedTraining, ModelTooLargeForMemoryExitsFiveWithOneLine) {
  const std::string config = *root_ / "huge.yaml";
  testing::WriteFile(config,
                     "model: {architecture: topk, num_latents: 4194304, k: 8}\n"
                     "data:\n"
                     "  synthetic: {num_samples: 256, num_features: 16, d: 16384, avg_active_features: 2}\n"
                     "  batch_size: 64\n"
                     "training: {total_tokens: 1024}\n"
                     "checkpoint: {output_dir: " + (*root_ / "huge") + "}\n");
  const auto started = std::chrono::steady_clock::now();
  const auto r = RunTrain("huge", {"--config", config, "--threads", "1"}, int64_t{16} << 20);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_EQ(r.exit_code, ToInt(TrainExitCode::kOutOfMemory)) << r.log;
  EXPECT_THAT(r.log, HasSubstr("out of memory: "));
  for (const char* trace : {"terminate called", "Exception raised from", "frame #", "Aborted", "enforce fail"}) {
    EXPECT_THAT(r.log, Not(HasSubstr(trace))) << r.log;
  }
  EXPECT_LT(seconds, 60) << "an allocation that fails must fail fast";
  ExpectFailureRecord(r, v1::TRAIN_EXIT_OUT_OF_MEMORY, "out of memory: ");
}

// A checkpoint that cannot be loaded (here its optimizer state is garbage) is a failed restore,
// exit 4, recognised by the status payload rather than by the wording of the message.
TEST_F(DistributedTraining, CheckpointThatCannotBeRestoredExitsFour) {
  const std::string dir = *root_ / "restore_broken";
  const auto first = Run("restore_broken1", "", {"--total-tokens", std::to_string(5 * kBatch)}, dir);
  ASSERT_EQ(first.exit_code, 0) << first.log;
  ASSERT_FALSE(first.checkpoints.empty());
  testing::WriteFile(first.checkpoints.back().directory() + "/trainer_state.safetensors", "not a safetensors file");
  const auto second = Run("restore_broken2", "", {}, dir);
  EXPECT_EQ(second.exit_code, ToInt(TrainExitCode::kRestoreFailed)) << second.log;
  EXPECT_THAT(second.log, HasSubstr("cannot restore checkpoint"));
  ExpectFailureRecord(second, v1::TRAIN_EXIT_RESTORE_FAILED, "cannot restore checkpoint");
}

}  // namespace
}  // namespace saegrid
