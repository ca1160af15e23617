// Training on a language model's activations made on the fly (engine/data/language_model_source.h)
// with a tiny GPT-2 in the Hugging Face layout: the batches are the model's activations at the
// kept positions, shuffled within buffers, split across replicas as one global order; a restored
// cursor continues exactly; a resumed run is bitwise the straight one; the dataset-wide input
// scale is fitted, kept and folded out of the exports, which record where the SAE came from; and
// bad models, hookpoints, contexts and token files are errors that name them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/config.h"
#include "engine/data/activation_source.h"
#include "engine/lm/language_model.h"
#include "engine/safetensors.h"
#include "engine/trainer.h"
#include "nlohmann/json.hpp"
#include "tests/test_support.h"
#include "tests/tiny_models.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;
using testing::kD;
using testing::kVocab;
using testing::RelativeError;
using testing::TempDir;

constexpr int64_t kContext = 16;
constexpr int64_t kSequences = 40;
constexpr int64_t kBos = 0;
// eval_fraction 0.1 holds out the last 4 sequences; the 36 others give 36 * 15 rows an epoch
// (the BOS at each start is excluded).
constexpr int64_t kTrainSequences = 36;
constexpr int64_t kEpochRows = kTrainSequences * (kContext - 1);

// A tiny GPT-2 and a token file of kSequences sequences, each opening with a BOS.
class OnTheFly : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteModel(dir_ / "model", testing::Gpt2(), {});
    torch::manual_seed(7);
    ids_ = torch::randint(1, kVocab, {kSequences, kContext}, torch::kLong);
    ids_.select(1, 0).fill_(kBos);
    testing::WriteTokenIds(dir_ / "tokens.bin", ids_);
  }

  DataConfig Data(int64_t batch_size) const {
    DataConfig d;
    d.language_model.model_path = dir_ / "model";
    d.language_model.tokens_path = dir_ / "tokens.bin";
    d.language_model.context_length = kContext;
    d.language_model.hookpoint = "blocks.1.hook_resid_post";
    d.language_model.exclude_token_ids = {kBos};
    d.language_model.sequences_per_forward = 5;
    d.batch_size = batch_size;
    d.eval_fraction = 0.1;
    d.seed = 3;
    return d;
  }

  TrainConfig Train(const std::string& out, int64_t steps) const {
    TrainConfig c;
    c.model.num_latents = 128;
    c.model.k = 4;
    c.model.dead_tokens_threshold = 256;  // AuxK in play
    c.model.geometric_median_samples = 128;
    c.optimizer.lr = 3e-3;
    c.data = Data(64);
    c.data.eval_max_tokens = 32;
    c.training.total_tokens = 64 * steps;
    c.checkpoint.output_dir = out;
    c.checkpoint.hookpoint = c.data.language_model.hookpoint;
    c.checkpoint.keep_last = 0;
    c.runtime.num_threads = 1;  // bitwise determinism
    return c;
  }

  // The model's activations at the kept positions of sequences [first, first + count), in order.
  std::pair<torch::Tensor, torch::Tensor> Expected(int64_t first, int64_t count) const {
    auto model = LoadLanguageModel(dir_ / "model");
    EXPECT_TRUE(model.ok()) << model.status();
    const auto hook = ParseHookpoint("blocks.1.hook_resid_post", testing::kLayers);
    const torch::Tensor ids = ids_.narrow(0, first, count);
    auto acts = (*model)->Forward(ids, {*hook});
    EXPECT_TRUE(acts.ok());
    const auto keep = ids.ne(kBos).reshape(-1);
    return {(*acts)[0].reshape({-1, kD}).index({keep}), ids.reshape(-1).index({keep})};
  }

  TempDir dir_;
  torch::Tensor ids_;
};

// Rows in a canonical order (by their first value), so that shuffled and unshuffled sets compare.
torch::Tensor Sorted(const torch::Tensor& rows) {
  return rows.index_select(0, std::get<1>(rows.select(1, 0).sort()));
}

std::vector<Batch> ReadBatches(ActivationSource& source, int n) {
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i) {
    auto b = source.NextBatch();
    EXPECT_TRUE(b.ok()) << b.status();
    if (!b.ok()) break;
    out.push_back(*b);
  }
  return out;
}

TEST_F(OnTheFly, AnEpochIsEveryKeptTrainingPositionOnceShuffledWithinBuffers) {
  auto source = OpenActivationSource(Data(60));
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->d_in(), kD);
  const auto batches = ReadBatches(**source, kEpochRows / 60);
  ASSERT_EQ(batches.size(), static_cast<size_t>(kEpochRows / 60));
  EXPECT_EQ(batches.back().cursor_after, (DataCursor{0, kEpochRows}));
  std::vector<torch::Tensor> xs, ts;
  for (const auto& b : batches) {
    xs.push_back(b.x);
    ts.push_back(b.tokens);
  }
  const torch::Tensor x = torch::cat(xs), t = torch::cat(ts);
  const auto [want_x, want_t] = Expected(0, kTrainSequences);
  // The same rows (model batches of 5 sequences against one of 36 differ in BLAS rounding only).
  EXPECT_LT(RelativeError(Sorted(x), Sorted(want_x)), 1e-5);
  EXPECT_EQ(t.ne(kBos).all().item<bool>(), true);
  EXPECT_EQ(t.bincount({}, kVocab).equal(want_t.bincount({}, kVocab)), true);
  // Shuffled: the first batch is not the file's first rows.
  EXPECT_FALSE(torch::equal(t.narrow(0, 0, 60), want_t.narrow(0, 0, 60)));
  // The held-out split is the last 4 sequences, in order.
  auto eval = (*source)->EvalSplit(1000);
  ASSERT_TRUE(eval.ok()) << eval.status();
  const auto [eval_x, eval_t] = Expected(kTrainSequences, kSequences - kTrainSequences);
  EXPECT_LT(RelativeError(eval->x, eval_x), 1e-5);
  EXPECT_TRUE(torch::equal(eval->tokens, eval_t));
}

TEST_F(OnTheFly, ReplicasSplitEachGlobalBatch) {
  auto one = OpenActivationSource(Data(60));
  auto first = OpenActivationSource(Data(60), 0, 2);
  auto second = OpenActivationSource(Data(60), 1, 2);
  ASSERT_TRUE(one.ok() && first.ok() && second.ok());
  for (int i = 0; i < 12; ++i) {  // across the epoch boundary
    auto whole = (*one)->NextBatch();
    auto a = (*first)->NextBatch(), b = (*second)->NextBatch();
    ASSERT_TRUE(whole.ok() && a.ok() && b.ok());
    EXPECT_TRUE(torch::equal(torch::cat({a->x, b->x}), whole->x)) << "batch " << i;
    EXPECT_TRUE(torch::equal(torch::cat({a->tokens, b->tokens}), whole->tokens));
    EXPECT_EQ(a->cursor_after, whole->cursor_after);
    EXPECT_EQ(b->cursor_after, whole->cursor_after);
  }
}

TEST_F(OnTheFly, ARestoredCursorContinuesExactly) {
  auto straight = OpenActivationSource(Data(50));
  ASSERT_TRUE(straight.ok());
  ReadBatches(**straight, 5);
  const DataCursor mid = (*straight)->cursor();  // inside a shuffle buffer
  EXPECT_EQ(mid, (DataCursor{0, 250}));
  const auto rest = ReadBatches(**straight, 9);  // past the end of the epoch (540 rows)
  ASSERT_EQ(rest.size(), 9u);
  EXPECT_EQ(rest.back().cursor_after.epoch, 1);

  auto resumed = OpenActivationSource(Data(50));
  ASSERT_TRUE(resumed.ok());
  ASSERT_TRUE((*resumed)->Restore(mid).ok());
  const auto again = ReadBatches(**resumed, 9);
  ASSERT_EQ(again.size(), 9u);
  for (size_t i = 0; i < rest.size(); ++i) {
    EXPECT_TRUE(torch::equal(rest[i].x, again[i].x)) << "batch " << i;
    EXPECT_TRUE(torch::equal(rest[i].tokens, again[i].tokens));
    EXPECT_EQ(rest[i].cursor_after, again[i].cursor_after);
  }
  // Exactly at the end of the epoch: the next batch is the next epoch's first.
  auto whole = OpenActivationSource(Data(60));
  auto at_end = OpenActivationSource(Data(60));
  ASSERT_TRUE(whole.ok() && at_end.ok());
  ReadBatches(**whole, kEpochRows / 60);
  EXPECT_EQ((*whole)->cursor(), (DataCursor{0, kEpochRows}));
  ASSERT_TRUE((*at_end)->Restore({0, kEpochRows}).ok());
  const auto next = ReadBatches(**whole, 2), next_again = ReadBatches(**at_end, 2);
  ASSERT_EQ(next_again.size(), 2u);
  for (size_t i = 0; i < next.size(); ++i) {
    EXPECT_TRUE(torch::equal(next[i].x, next_again[i].x));
    EXPECT_EQ(next[i].cursor_after, next_again[i].cursor_after);
  }
  EXPECT_EQ(next.back().cursor_after, (DataCursor{1, 120}));
  // A cursor beyond the epoch is refused: the data changed since the checkpoint.
  auto moved = (*resumed)->Restore({0, kEpochRows + 1});
  EXPECT_EQ(moved.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(moved.message()), HasSubstr("tokens.bin"));
}

// The initialisation sample's buffers are handed to the producer rather than made again: the
// batches are the same as a source that never sampled.
TEST_F(OnTheFly, TheSamplesBuffersAreReusedWithTheSameBatches) {
  // Batches of 50: buffers of ceil(4 * 50 / 16) = 13 sequences, 13 * 15 = 195 rows (150 for the last).
  auto sampled = OpenActivationSource(Data(50));
  auto plain = OpenActivationSource(Data(50));
  ASSERT_TRUE(sampled.ok() && plain.ok());
  auto sample = (*sampled)->Sample(300);  // buffers 0 and 1 of epoch 0
  ASSERT_TRUE(sample.ok());
  auto a = ReadBatches(**sampled, 6), b = ReadBatches(**plain, 6);  // 300 rows: inside buffer 1
  // The producer ran the model only for what follows the sampled buffers (buffer 2, 150 rows, if
  // it got to it), against buffers 0 and 1 (and maybe 2) for the source that never sampled.
  EXPECT_LE((*sampled)->activity().rows_produced, 150);
  EXPECT_GE((*plain)->activity().rows_produced, 390);
  // The sample is the first rows of the epoch's order.
  std::vector<torch::Tensor> first;
  for (const auto& batch : a) first.push_back(batch.x);
  EXPECT_TRUE(torch::equal(*sample, torch::cat(first)));
  for (const auto& batch : ReadBatches(**sampled, 6)) a.push_back(batch);
  for (const auto& batch : ReadBatches(**plain, 6)) b.push_back(batch);
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].x, b[i].x)) << "batch " << i;
}

TEST_F(OnTheFly, AResumedRunGivesTheStraightRunsWeightsBitwise) {
  auto straight = testing::Make(Train(dir_ / "straight", 12));
  ASSERT_NE(straight, nullptr);
  ASSERT_TRUE(straight->Train().ok());
  const TrainConfig c = Train(dir_ / "resumed", 12);
  {
    auto first = testing::Make(c);
    ASSERT_NE(first, nullptr);
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(first->Step().ok());
    ASSERT_TRUE(first->WriteCheckpointNow(nullptr).ok());
  }
  auto second = testing::Make(c);
  ASSERT_NE(second, nullptr);
  ASSERT_TRUE(second->resumed());
  EXPECT_EQ(second->step(), 5);
  ASSERT_TRUE(second->Train().ok());
  const auto a = straight->model().params().All(), b = second->model().params().All();
  for (size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE(SaeParameters::Names()[i]);
    EXPECT_TRUE(torch::equal(a[i], b[i]));
  }
}

// TopK reconstruction with plain operators: the exported SAE's own semantics.
torch::Tensor Reconstruct(const torch::Tensor& x, const torch::Tensor& w_enc, const torch::Tensor& b_enc,
                          const torch::Tensor& w_dec, const torch::Tensor& b_dec, int64_t k) {
  const torch::Tensor pre = torch::matmul(x - b_dec, w_enc.t()) + b_enc;
  const auto [values, indices] = pre.topk(k, -1);
  const torch::Tensor codes = torch::zeros_like(pre).scatter(-1, indices, torch::relu(values));
  return torch::matmul(codes, w_dec) + b_dec;
}

TEST_F(OnTheFly, TheDatasetConstantIsFittedKeptAndFoldedOutOfTheExports) {
  TrainConfig c = Train(dir_ / "scaled", 6);
  c.model.normalize_inputs = InputNormalization::kDatasetConstant;
  auto trainer = testing::Make(c);
  ASSERT_NE(trainer, nullptr);
  // E||s x||^2 = d_in over the initialisation sample.
  auto sample = OpenActivationSource(c.data).value()->Sample(c.model.geometric_median_samples);
  ASSERT_TRUE(sample.ok());
  const double s = trainer->config().model.input_scale;
  const double mean_sq = sample->to(torch::kDouble).pow(2).sum(1).mean().item<double>();
  EXPECT_NEAR(s * s * mean_sq, static_cast<double>(kD), 1e-6 * kD);
  EXPECT_GT(std::abs(s - 1.0), 0.05);  // the test must be able to tell a folded export from an unfolded one
  auto result = trainer->Train();
  ASSERT_TRUE(result.ok()) << result.status();
  const std::string step = dir_ / "scaled/checkpoints/step_000000006";

  // The sparsify export takes raw activations: its reconstruction is the trained SAE's (which saw
  // s x) divided by s.
  auto file = SafetensorsFile::Open(step + "/sparsify/blocks.1.hook_resid_post/sae.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const auto [x, unused] = Expected(0, 8);
  const auto p = trainer->PublishedWeights();
  const torch::Tensor want = Reconstruct(x * s, p.w_enc, p.b_enc, p.w_dec, p.b_pre, c.model.k) / s;
  const torch::Tensor got = Reconstruct(x, *file->Get("encoder.weight"), *file->Get("encoder.bias"),
                                        *file->Get("W_dec"), *file->Get("b_dec"), c.model.k);
  EXPECT_LT(RelativeError(got, want), 1e-5);
  // The decoder keeps unit rows.
  EXPECT_LT((file->Get("W_dec")->norm(2, 1) - 1).abs().max().item<double>(), 1e-4);

  // The scale is kept: a resumed trainer has it without refitting.
  TrainConfig more = c;
  more.training.total_tokens = 64 * 8;
  auto resumed = testing::Make(more);
  ASSERT_NE(resumed, nullptr);
  EXPECT_EQ(resumed->config().model.input_scale, s);

  // The SAELens export says where the SAE came from and takes raw activations.
  std::ifstream in(step + "/saelens/cfg.json");
  const auto cfg = nlohmann::json::parse(in);
  EXPECT_EQ(cfg["normalize_activations"], "none");
  EXPECT_EQ(cfg["metadata"]["model_name"], "model");
  EXPECT_EQ(cfg["metadata"]["hook_name"], "blocks.1.hook_resid_post");
  EXPECT_EQ(cfg["metadata"]["context_size"], kContext);
  EXPECT_EQ(cfg["metadata"]["dataset_path"], dir_ / "tokens.bin");
  auto lens = SafetensorsFile::Open(step + "/saelens/sae_weights.safetensors");
  ASSERT_TRUE(lens.ok());
  const torch::Tensor lens_got = Reconstruct(x, lens->Get("W_enc")->t(), *lens->Get("b_enc"), *lens->Get("W_dec"),
                                             *lens->Get("b_dec"), c.model.k);
  EXPECT_LT(RelativeError(lens_got, want), 1e-5);
  // The evaluation's MSE is in the raw activations' units: the exported SAE's error on the
  // held-out rows (the first 32 of the last 4 sequences).
  const torch::Tensor eval_x = Expected(kTrainSequences, kSequences - kTrainSequences).first.narrow(0, 0, 32);
  const torch::Tensor eval_hat = Reconstruct(eval_x, *file->Get("encoder.weight"), *file->Get("encoder.bias"),
                                             *file->Get("W_dec"), *file->Get("b_dec"), c.model.k);
  const double raw_mse = (eval_hat - eval_x).pow(2).mean().item<double>();
  EXPECT_NEAR(result->mse, raw_mse, 1e-4 * raw_mse);
}

TEST_F(OnTheFly, SparsifyHookpointNamesGiveTheTransformerLensHookName) {
  TrainConfig c = Train(dir_ / "sparsify_name", 2);
  c.data.language_model.hookpoint = "h.1";
  c.checkpoint.hookpoint = "h.1";
  auto trainer = testing::Make(c);
  ASSERT_NE(trainer, nullptr);
  ASSERT_TRUE(trainer->Train().ok());
  const std::string step = dir_ / "sparsify_name/checkpoints/step_000000002";
  EXPECT_TRUE(std::filesystem::exists(step + "/sparsify/h.1/cfg.json"));
  EXPECT_TRUE(std::filesystem::exists(step + "/sparsify/h.1/sae.safetensors"));
  std::ifstream in(step + "/saelens/cfg.json");
  EXPECT_EQ(nlohmann::json::parse(in)["metadata"]["hook_name"], "blocks.1.hook_resid_post");
}

TEST_F(OnTheFly, BadModelsHookpointsContextsAndTokensAreNamed) {
  auto error = [&](const TrainConfig& c) -> std::string {
    auto t = Trainer::Create(c);
    EXPECT_FALSE(t.ok());
    return t.ok() ? "" : std::string(t.status().message());
  };
  TrainConfig c = Train(dir_ / "bad", 2);

  TrainConfig hook = c;
  hook.data.language_model.hookpoint = "blocks.9.hook_resid_post";
  EXPECT_THAT(error(hook), HasSubstr("data.language_model.hookpoint"));
  hook.data.language_model.hookpoint = "blocks.1.hook_resid_mid";
  EXPECT_THAT(error(hook), HasSubstr("data.language_model.hookpoint"));

  TrainConfig context = c;
  context.data.language_model.context_length = testing::kPositions + 1;
  EXPECT_THAT(error(context), HasSubstr("data.language_model.context_length"));

  // An id outside the vocabulary: the file and the id's offset.
  torch::Tensor bad_ids = ids_.clone();
  bad_ids[2][5] = kVocab + 3;
  testing::WriteTokenIds(dir_ / "bad_tokens.bin", bad_ids);
  TrainConfig tokens = c;
  tokens.data.language_model.tokens_path = dir_ / "bad_tokens.bin";
  tokens.training.total_tokens = 64 * 20;  // past the sequence that holds it
  // Ids are checked as they are read: at the start if the initialisation sample holds it, else
  // when training reaches it.
  std::string token_error;
  {
    auto t = Trainer::Create(tokens);
    if (!t.ok()) {
      token_error = std::string(t.status().message());
    } else {
      auto trained = (*t)->Train();
      ASSERT_FALSE(trained.ok());
      token_error = std::string(trained.status().message());
    }
  }
  EXPECT_THAT(token_error, HasSubstr("bad_tokens.bin"));
  EXPECT_THAT(token_error, HasSubstr(std::to_string(2 * kContext + 5)));
  TrainConfig missing_tokens = c;
  missing_tokens.data.language_model.tokens_path = dir_ / "nope.bin";
  EXPECT_THAT(error(missing_tokens), HasSubstr("nope.bin"));

  // Missing weights, a tensor the config contradicts, a truncated weights file.
  testing::WriteModel(dir_ / "no_weights", testing::Gpt2(), {});
  std::filesystem::remove(dir_ / "no_weights/model.safetensors");
  TrainConfig missing = c;
  missing.data.language_model.model_path = dir_ / "no_weights";
  EXPECT_THAT(error(missing), HasSubstr("data.language_model.model_path"));
  testing::WriteModel(dir_ / "misshapen", testing::Gpt2(), {}, "", "h.1.mlp.c_fc.weight");
  TrainConfig misshapen = c;
  misshapen.data.language_model.model_path = dir_ / "misshapen";
  EXPECT_THAT(error(misshapen), HasSubstr("h.1.mlp.c_fc.weight"));
  testing::WriteModel(dir_ / "truncated", testing::Gpt2(), {});
  std::filesystem::resize_file(dir_ / "truncated/model.safetensors",
                               std::filesystem::file_size(dir_ / "truncated/model.safetensors") / 2);
  TrainConfig truncated = c;
  truncated.data.language_model.model_path = dir_ / "truncated";
  EXPECT_THAT(error(truncated), HasSubstr("model.safetensors"));
  // Every position excluded.
  TrainConfig all_excluded = c;
  all_excluded.data.language_model.exclude_token_ids.clear();
  for (int64_t id = 0; id < kVocab; ++id) all_excluded.data.language_model.exclude_token_ids.push_back(id);
  EXPECT_THAT(error(all_excluded), HasSubstr("exclude_token_ids"));
}

#ifdef SAEGRID_BINARY
// A sharded gang over real processes: shard 0 runs the model and broadcasts each batch to the
// other shard, and the run is the single process's (exact mode).
std::string GangConfig(const std::string& model, const std::string& tokens, const std::string& parallelism,
                       double eval_fraction = 0.1) {
  return "model: {num_latents: 128, k: 4, dead_tokens_threshold: 256, geometric_median_samples: 128}\n"
         "optimizer: {lr: 0.003}\n"
         "data:\n"
         "  language_model: {model_path: " + model + ", tokens_path: " + tokens +
         ", context_length: 16, hookpoint: blocks.1.hook_resid_post, exclude_token_ids: [0], sequences_per_forward: 5}\n"
         "  batch_size: 64\n"
         "  eval_fraction: " + std::to_string(eval_fraction) + "\n"
         "  eval_max_tokens: 32\n"
         "training: {total_tokens: 640, log_every_steps: 1}\n" +
         (parallelism.empty() ? "" : "parallelism: " + parallelism + "\n");
}

TEST_F(OnTheFly, TwoShardsShareShardZerosActivationsAndMatchOneProcess) {
  auto run = [&](const std::string& name, const std::string& parallelism, const std::string& model,
                 double eval_fraction = 0.1) {
    testing::WriteFile(dir_ / (name + ".yaml"), GangConfig(model, dir_ / "tokens.bin", parallelism, eval_fraction));
    std::vector<std::string> argv = {SAEGRID_BINARY, "train", "--config", dir_ / (name + ".yaml"), "--output-dir",
                                     dir_ / name, "--quiet"};
    if (parallelism.empty()) argv.insert(argv.end(), {"--threads", "1"});
    const auto start = std::chrono::steady_clock::now();
    const int code = testing::RunProcess(argv, dir_ / (name + ".log"), 300);
    return std::make_pair(code, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  };
  auto weights = [&](const std::string& name) {
    auto file = SafetensorsFile::Open(dir_ / (name + "/checkpoints/step_000000010/sparsify/blocks.1.hook_resid_post/sae.safetensors"));
    EXPECT_TRUE(file.ok()) << file.status();
    std::vector<torch::Tensor> out;
    if (file.ok()) {
      for (const char* t : {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}) out.push_back(file->Get(t)->clone());
    }
    return out;
  };
  ASSERT_EQ(run("single", "", dir_ / "model").first, 0) << testing::ReadFile(dir_ / "single.log");
  ASSERT_EQ(run("sharded", "{shards: 2, exact: true}", dir_ / "model").first, 0) << testing::ReadFile(dir_ / "sharded.log");
  const auto a = weights("single"), b = weights("sharded");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_LE(RelativeError(b[i], a[i]), 1e-5) << i;

  // Without a held-out split the leader evaluates on a sample it reads alone (no collective the
  // other shard would not join), and a resumed gang seeks shard 0's source.
  ASSERT_EQ(run("in_sample", "{shards: 2, exact: true}", dir_ / "model", 0.0).first, 0)
      << testing::ReadFile(dir_ / "in_sample.log");
  const auto evaluation = nlohmann::json::parse(
      testing::ReadFile(dir_ / "in_sample/checkpoints/step_000000010/evaluation.json"), nullptr, false);
  ASSERT_TRUE(evaluation.is_object());
  EXPECT_EQ(evaluation["split"], "training_sample");
  // Resumed from its step-10 checkpoint with more tokens: 2 more steps.
  testing::WriteFile(dir_ / "in_sample.yaml", GangConfig(dir_ / "model", dir_ / "tokens.bin", "{shards: 2, exact: true}", 0.0));
  ASSERT_EQ(testing::RunProcess({SAEGRID_BINARY, "train", "--config", dir_ / "in_sample.yaml", "--output-dir",
                                 dir_ / "in_sample", "--total-tokens", "768", "--quiet"},
                                dir_ / "in_sample_resumed.log", 300),
            0)
      << testing::ReadFile(dir_ / "in_sample_resumed.log");
  EXPECT_TRUE(std::filesystem::exists(dir_ / "in_sample/checkpoints/step_000000012/evaluation.json"));

  // A model shard 0 cannot open ends the whole gang at once, naming it (no peer waits for a
  // batch that never comes).
  const auto [code, seconds] = run("broken", "{shards: 2, timeout_seconds: 120}", dir_ / "no_such_model");
  EXPECT_NE(code, 0);
  EXPECT_LT(seconds, 60);
  EXPECT_THAT(testing::ReadFile(dir_ / "broken.log"), HasSubstr("data.language_model.model_path"));
}

// `saegrid harvest --config` on the job spec training uses: progress lines, shards the data path
// reads (and a bf16 safetensors variant), a second run that finds every shard done, bad flags.
TEST_F(OnTheFly, HarvestCommandWritesShardsTheDataPathReadsAndResumes) {
  testing::WriteFile(dir_ / "job.yaml", GangConfig(dir_ / "model", dir_ / "tokens.bin", ""));
  auto harvest = [&](const std::vector<std::string>& extra, const std::string& log) {
    std::vector<std::string> argv = {SAEGRID_BINARY, "harvest", "--config", dir_ / "job.yaml", "--sequences-per-shard", "16",
                                     "--threads", "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return testing::RunProcess(argv, dir_ / log, 120);
  };
  ASSERT_EQ(harvest({"--output-dir", dir_ / "cache"}, "harvest.log"), 0) << testing::ReadFile(dir_ / "harvest.log");
  const std::string log = testing::ReadFile(dir_ / "harvest.log");
  EXPECT_THAT(log, HasSubstr("harvest: shard 3/3"));
  EXPECT_THAT(log, HasSubstr("data.path: " + (dir_ / "cache") + "/manifest.json"));
  DataConfig cached;
  cached.path = dir_ / "cache/manifest.json";
  cached.batch_size = 60;
  cached.eval_fraction = 0;
  auto source = OpenActivationSource(cached);
  ASSERT_TRUE(source.ok()) << source.status();
  // Every kept position of every sequence, in file order.
  const auto [want_x, want_t] = Expected(0, kSequences);
  auto all = (*source)->Sample(kSequences * kContext);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(0), want_x.size(0));
  EXPECT_LT(RelativeError(Sorted(*all), Sorted(want_x)), 1e-5);

  ASSERT_EQ(harvest({"--output-dir", dir_ / "cache"}, "again.log"), 0);
  EXPECT_THAT(testing::ReadFile(dir_ / "again.log"), HasSubstr("3 shards found from an earlier run"));

  ASSERT_EQ(harvest({"--output-dir", dir_ / "bf16", "--format", "safetensors", "--dtype", "bfloat16"}, "bf16.log"), 0)
      << testing::ReadFile(dir_ / "bf16.log");
  cached.path = dir_ / "bf16/manifest.json";
  auto bf16 = OpenActivationSource(cached);
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  auto rows = (*bf16)->Sample(kSequences * kContext);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(0), want_x.size(0));
  // The same rows, rounded to bfloat16 (8 bits): compared through order-free sums.
  EXPECT_LT(RelativeError(rows->sum(0), want_x.sum(0)), 1e-2);
  EXPECT_LT(RelativeError(rows->pow(2).sum(0), want_x.pow(2).sum(0)), 1e-2);

  EXPECT_EQ(harvest({"--output-dir", dir_ / "x", "--dtype", "bfloat16"}, "bad.log"), 2);
  EXPECT_THAT(testing::ReadFile(dir_ / "bad.log"), HasSubstr("--format safetensors"));
  testing::WriteFile(dir_ / "synthetic.yaml", "data: {synthetic: {d: 8}}\ntraining: {total_tokens: 10}\n");
  EXPECT_EQ(testing::RunProcess({SAEGRID_BINARY, "harvest", "--config", dir_ / "synthetic.yaml"}, dir_ / "syn.log", 60), 2);
  EXPECT_THAT(testing::ReadFile(dir_ / "syn.log"), HasSubstr("data.language_model"));
}
#endif  // SAEGRID_BINARY

}  // namespace
}  // namespace saegrid
