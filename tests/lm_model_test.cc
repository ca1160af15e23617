// Language models in C++ (engine/lm/): tiny random models in the Hugging Face layout, written by
// the test (config.json + model.safetensors, or a sharded index), against tests/lm_reference.py,
// a separately written numpy forward: logits and every hookpoint kind at every layer within 1e-4
// relative. Bad directories, tensors and requests are errors that name what is wrong.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "engine/config.h"
#include "engine/data/activation_source.h"
#include "engine/lm/harvest.h"
#include "engine/lm/hf_checkpoint.h"
#include "engine/lm/token_file.h"
#include "engine/lm/language_model.h"
#include "engine/npy.h"
#include "engine/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/test_support.h"
#include "tests/tiny_models.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;
using testing::RelativeError;
using testing::TempDir;

// The interpreter with numpy: Debian's, not a shim on PATH that may lack it.
std::string Python() { return std::filesystem::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3"; }

using testing::Gpt2;
using testing::GptNeox;
using testing::kD;
using testing::kHeads;
using testing::kLayers;
using testing::kPositions;
using testing::kVocab;
using testing::Layout;
using testing::Llama;
using testing::ModelSpec;
using testing::WriteModel;

torch::Tensor ReadNpy(const std::string& path) {
  auto array = OpenNpy(path);
  EXPECT_TRUE(array.ok()) << array.status();
  if (!array.ok()) return torch::Tensor();
  return torch::from_blob(const_cast<uint8_t*>(array->data()), array->shape, torch::kFloat).clone();
}

void ExpectMatchesReference(const ModelSpec& spec, const Layout& layout) {
  TempDir dir;
  const std::string model_dir = dir / "model";
  WriteModel(model_dir, spec, layout);
  auto model = LoadLanguageModel(model_dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->num_layers(), kLayers);
  EXPECT_EQ((*model)->model_type(), spec.config["model_type"].get<std::string>());
  torch::manual_seed(3);
  const auto ids = torch::randint(0, kVocab, {2, 16}, torch::kLong);
  ASSERT_TRUE(WriteNpy(dir / "ids.npy", ids).ok());
  const std::string command = Python() + " " + SAEGRID_SOURCE_DIR "/tests/lm_reference.py --model " + model_dir +
                              " --tokens " + (dir / "ids.npy") + " --out " + (dir / "reference") + " > " +
                              (dir / "reference.log") + " 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << testing::ReadFile(dir / "reference.log");
  std::vector<Hookpoint> hooks;
  for (int64_t l = 0; l < kLayers; ++l) {
    for (const char* kind : {"hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out"}) {
      auto h = ParseHookpoint("blocks." + std::to_string(l) + "." + kind, kLayers);
      ASSERT_TRUE(h.ok()) << h.status();
      hooks.push_back(*h);
    }
  }
  torch::Tensor logits;
  auto acts = (*model)->Forward(ids, hooks, &logits);
  ASSERT_TRUE(acts.ok()) << acts.status();
  const double logits_error = RelativeError(logits, ReadNpy(dir / "reference/logits.npy"));
  EXPECT_LT(logits_error, 1e-4);
  double worst = 0;
  for (size_t i = 0; i < hooks.size(); ++i) {
    SCOPED_TRACE(hooks[i].name);
    const auto expected = ReadNpy(dir / ("reference/" + hooks[i].name + ".npy"));
    ASSERT_EQ((*acts)[i].sizes(), expected.sizes());
    const double error = RelativeError((*acts)[i], expected);
    EXPECT_LT(error, 1e-4);
    worst = std::max(worst, error);
  }
  std::printf("%s: logits relative error %.2e, worst hookpoint %.2e\n", spec.config["model_type"].get<std::string>().c_str(),
              logits_error, worst);
  // Without logits the forward stops at the last layer a hook needs, with the same values.
  auto early = (*model)->Forward(ids, {hooks[1]});  // blocks.0.hook_resid_post
  ASSERT_TRUE(early.ok());
  EXPECT_TRUE(torch::equal((*early)[0], (*acts)[1]));
}

TEST(LanguageModel, Gpt2MatchesTheNumpyReference) { ExpectMatchesReference(Gpt2(), {}); }

TEST(LanguageModel, Gpt2WithPrefixedBf16ShardedWeightsMatchesTheNumpyReference) {
  ExpectMatchesReference(Gpt2(), {"transformer.", torch::kBFloat16, 2});
}

TEST(LanguageModel, GptNeoxParallelAndSequentialMatchTheNumpyReference) {
  ExpectMatchesReference(GptNeox(/*parallel_residual=*/true), {"gpt_neox.", torch::kFloat, 1});
  ExpectMatchesReference(GptNeox(/*parallel_residual=*/false), {"", torch::kHalf, 2});
}

TEST(LanguageModel, LlamaAndQwen2MatchTheNumpyReference) {
  ExpectMatchesReference(Llama("llama"), {"model.", torch::kFloat, 1});
  ExpectMatchesReference(Llama("qwen2"), {"model.", torch::kBFloat16, 3});
}

// Seed 004's control: the architecture with its own untrained initialisation, from a seed; the
// embeddings kept as stored unless asked.
TEST(LanguageModel, RandomisedWeightsFollowTheSeedAndKeepTheEmbeddingsUnlessAsked) {
  TempDir dir;
  WriteModel(dir / "model", Gpt2(), {});
  auto h0 = ParseHookpoint("blocks.0.hook_resid_pre", kLayers);
  auto h2 = ParseHookpoint("blocks.2.hook_resid_post", kLayers);
  ASSERT_TRUE(h0.ok() && h2.ok());
  const auto ids = torch::randint(0, kVocab, {2, 12}, torch::kLong);
  auto run = [&](const RandomWeights* random) {
    auto model = LoadLanguageModel(dir / "model", torch::kCPU, random);
    EXPECT_TRUE(model.ok()) << model.status();
    torch::Tensor logits;
    auto acts = (*model)->Forward(ids, {*h0, *h2}, &logits);
    EXPECT_TRUE(acts.ok());
    return std::make_tuple((*acts)[0], (*acts)[1], logits);
  };
  const auto [trained_pre, trained_post, trained_logits] = run(nullptr);
  RandomWeights random{true, 7, false};
  const auto [pre, post, logits] = run(&random);
  EXPECT_TRUE(torch::equal(pre, trained_pre)) << "embeddings are kept";
  EXPECT_GT(RelativeError(post, trained_post), 0.5);
  const auto [pre_again, post_again, logits_again] = run(&random);
  EXPECT_TRUE(torch::equal(post_again, post));  // the seed decides
  random.seed = 8;
  EXPECT_FALSE(torch::equal(std::get<1>(run(&random)), post));
  random.embeddings_too = true;
  const auto [random_pre, random_post, random_logits] = run(&random);
  EXPECT_GT(RelativeError(random_pre, trained_pre), 0.5);
  // wte + wpe, each N(0, 0.02^2): the residual stream's entries have std 0.02 sqrt(2).
  EXPECT_NEAR(random_pre.std().item<double>(), 0.02 * std::sqrt(2.0), 0.004);
}

// Cached activations: shards by sequence range, excluded positions left out, a manifest the data
// path reads, and a resume that redoes no finished shard.
TEST(Harvest, ShardsHoldTheHookpointsActivationsAndAKilledHarvestResumes) {
  TempDir dir;
  WriteModel(dir / "model", Gpt2(), {});
  auto model = LoadLanguageModel(dir / "model");
  ASSERT_TRUE(model.ok()) << model.status();
  torch::manual_seed(5);
  auto ids = torch::randint(1, kVocab, {10, 8}, torch::kLong);
  ids.select(1, 0).fill_(0);  // a BOS at every sequence start
  std::vector<uint16_t> flat(ids.numel());
  for (int64_t i = 0; i < ids.numel(); ++i) flat[i] = static_cast<uint16_t>(ids.view(-1)[i].item<int64_t>());
  {
    std::ofstream out(dir / "tokens.bin", std::ios::binary);
    out.write(reinterpret_cast<const char*>(flat.data()), static_cast<std::streamsize>(flat.size() * 2));
  }
  auto tokens = TokenFile::Open({dir / "tokens.bin", "uint16", 8, kVocab});
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  HarvestOptions options;
  options.output_dir = dir / "harvest";
  options.hook = *ParseHookpoint("blocks.1.hook_resid_post", kLayers);
  options.model_description = dir / "model";
  options.sequences_per_shard = 4;
  options.sequences_per_batch = 3;
  options.excluded_ids = {0};
  auto done = HarvestActivations(**model, **tokens, options);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->shards_total, 3);
  EXPECT_EQ(done->shards_skipped, 0);
  EXPECT_EQ(done->rows_written, 10 * 7);  // BOS positions left out

  // The shards are the model's activations at the kept positions, in order.
  auto expected = (*model)->Forward(ids, {options.hook});
  ASSERT_TRUE(expected.ok());
  const auto keep = ids.ne(0).reshape(-1);
  const auto expected_rows = (*expected)[0].reshape({-1, kD}).index({keep});
  std::vector<torch::Tensor> rows, row_ids;
  for (int s = 0; s < 3; ++s) {
    rows.push_back(ReadNpy(dir / ("harvest/shard-0000" + std::to_string(s) + ".npy")));
    auto t = OpenNpy(dir / ("harvest/shard-0000" + std::to_string(s) + ".tokens.npy"));
    ASSERT_TRUE(t.ok());
    row_ids.push_back(torch::from_blob(const_cast<uint8_t*>(t->data()), t->shape, torch::kLong).clone());
  }
  // The same activations; batches of 3 sequences against one of 10 differ in BLAS rounding only.
  EXPECT_LT(RelativeError(torch::cat(rows), expected_rows), 1e-6);
  EXPECT_TRUE(torch::equal(torch::cat(row_ids), ids.reshape(-1).index({keep})));
  // The training data path reads the manifest.
  DataConfig data;
  data.path = dir / "harvest/manifest.json";
  data.batch_size = 16;
  data.block_rows = 8;
  data.eval_fraction = 0;
  auto source = OpenActivationSource(data);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->d_in(), kD);

  // Killed while writing shard 1: shards 0 and 2 are kept as they are, shard 1 is redone.
  const std::string first = dir / "harvest/shard-00000.npy";
  const auto first_written = std::filesystem::last_write_time(first);
  std::filesystem::remove(dir / "harvest/shard-00001.npy");
  auto resumed = HarvestActivations(**model, **tokens, options);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->shards_skipped, 2);
  EXPECT_EQ(resumed->rows_written, 4 * 7);
  EXPECT_EQ(std::filesystem::last_write_time(first), first_written);
  EXPECT_TRUE(torch::equal(ReadNpy(dir / "harvest/shard-00001.npy"), rows[1]));
  // Another harvest into the same directory is refused.
  options.hook = *ParseHookpoint("blocks.0.hook_mlp_out", kLayers);
  auto other = HarvestActivations(**model, **tokens, options);
  ASSERT_FALSE(other.ok());
  EXPECT_THAT(std::string(other.status().message()), HasSubstr("describes another harvest"));
}

TEST(LanguageModel, HookpointsInSaeLensAndSparsifyForms) {
  auto h = ParseHookpoint("blocks.2.hook_mlp_out", 4);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->layer, 2);
  EXPECT_EQ(h->kind, Hookpoint::Kind::kMlpOut);
  for (const char* sparsify : {"h.3", "layers.3", "transformer.h.3", "gpt_neox.layers.3", "model.layers.3"}) {
    auto s = ParseHookpoint(sparsify, 4);
    ASSERT_TRUE(s.ok()) << sparsify << ": " << s.status();
    EXPECT_EQ(s->layer, 3);
    EXPECT_EQ(s->kind, Hookpoint::Kind::kResidPost);
  }
  EXPECT_THAT(std::string(ParseHookpoint("blocks.4.hook_resid_pre", 4).status().message()),
              HasSubstr("hookpoint \"blocks.4.hook_resid_pre\": layer 4 does not exist: the model has 4"));
  EXPECT_THAT(std::string(ParseHookpoint("blocks.1.hook_q", 4).status().message()), HasSubstr("expected blocks.L.hook_"));
  EXPECT_THAT(std::string(ParseHookpoint("h.x", 4).status().message()), HasSubstr("\"x\" is not a layer number"));
  EXPECT_THAT(std::string(ParseHookpoint("encoder.3", 4).status().message()), HasSubstr("module path"));
}

TEST(LanguageModel, BadModelsAndRequestsAreNamed) {
  TempDir dir;
  auto error = [](const std::string& model_dir) {
    auto m = LoadLanguageModel(model_dir);
    return m.ok() ? std::string("OK") : std::string(m.status().message());
  };
  EXPECT_THAT(error(dir / "nowhere"), HasSubstr("model directory " + (dir / "nowhere") + " does not exist"));
  WriteModel(dir / "missing", Gpt2(), {}, /*drop=*/"h.1.mlp.c_fc.bias");
  EXPECT_THAT(error(dir / "missing"), HasSubstr("tensor \"h.1.mlp.c_fc.bias\" is missing"));
  WriteModel(dir / "misshapen", Gpt2(), {}, "", /*misshape=*/"h.0.attn.c_proj.weight");
  EXPECT_THAT(error(dir / "misshapen"), HasSubstr("tensor \"h.0.attn.c_proj.weight\" in " + (dir / "misshapen") +
                                                  "/model.safetensors is [32, 33], the config wants [32, 32]"));
  WriteModel(dir / "other", Gpt2(), {});
  std::ofstream(dir / "other/config.json") << R"({"model_type": "bert", "n_layer": 1})";
  EXPECT_THAT(error(dir / "other"), HasSubstr("model_type \"bert\" is not supported"));
  std::ofstream(dir / "other/config.json") << "{not json";
  EXPECT_THAT(error(dir / "other"), HasSubstr("config.json: not a JSON object"));
  std::filesystem::create_directories(dir / "empty");
  std::ofstream(dir / "empty/config.json") << R"({"model_type": "gpt2"})";
  EXPECT_THAT(error(dir / "empty"), HasSubstr("has neither model.safetensors nor model.safetensors.index.json"));

  WriteModel(dir / "good", Gpt2(), {});
  auto model = LoadLanguageModel(dir / "good");
  ASSERT_TRUE(model.ok()) << model.status();
  auto h = ParseHookpoint("h.0", kLayers);
  ASSERT_TRUE(h.ok());
  EXPECT_THAT(std::string((*model)->Forward(torch::zeros({1, kPositions + 1}, torch::kLong), {*h}).status().message()),
              HasSubstr("context length 25 exceeds the model's n_positions 24"));
  EXPECT_THAT(std::string((*model)->Forward(torch::full({1, 4}, kVocab, torch::kLong), {*h}).status().message()),
              HasSubstr("outside the vocabulary of 50"));
  // Llama: rope_scaling is refused rather than ignored; a missing untied head is named.
  ModelSpec scaled = Llama("llama");
  scaled.config["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  WriteModel(dir / "scaled", scaled, {});
  EXPECT_THAT(error(dir / "scaled"), HasSubstr("rope_scaling is not supported"));
  // Config fields of the wrong type are named, not thrown.
  ModelSpec wrong_type = Gpt2();
  wrong_type.config["activation_function"] = 3;
  WriteModel(dir / "wrong_type", wrong_type, {});
  EXPECT_THAT(error(dir / "wrong_type"), HasSubstr("config.json: \"activation_function\" must be a string"));
  ModelSpec wrong_bool = Llama("llama");
  wrong_bool.config["tie_word_embeddings"] = "yes";
  WriteModel(dir / "wrong_bool", wrong_bool, {});
  EXPECT_THAT(error(dir / "wrong_bool"), HasSubstr("\"tie_word_embeddings\" must be true or false"));
  WriteModel(dir / "headless", Llama("llama"), {}, /*drop=*/"lm_head.weight");
  EXPECT_THAT(error(dir / "headless"), HasSubstr("tensor \"lm_head.weight\" is missing"));
}

}  // namespace
}  // namespace saegrid
