// Language models in C++ (engine/lm/): tiny random models in the Hugging Face layout, written by
// the test (config.json + model.safetensors, or a sharded index), against tests/lm_reference.py,
// a separately written numpy forward: logits and every hookpoint kind at every layer within 1e-4
// relative. Bad directories, tensors and requests are errors that name what is wrong.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/lm/language_model.h"
#include "engine/npy.h"
#include "engine/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;
using testing::RelativeError;
using testing::TempDir;

constexpr int64_t kLayers = 3, kD = 32, kHeads = 4, kVocab = 50, kPositions = 24;

// The interpreter with numpy: Debian's, not a shim on PATH that may lack it.
std::string Python() { return std::filesystem::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3"; }

struct Gpt2Files {
  std::string prefix;  // "" or "transformer."
  torch::ScalarType dtype = torch::kFloat;
  int shards = 1;
};

// A random GPT-2 with weights large enough that every sublayer matters.
void WriteGpt2(const std::string& dir, const Gpt2Files& f, const std::string& drop = "",
               const std::string& misshape = "") {
  std::filesystem::create_directories(dir);
  nlohmann::json config = {{"model_type", "gpt2"}, {"n_layer", kLayers}, {"n_embd", kD}, {"n_head", kHeads},
                           {"vocab_size", kVocab}, {"n_positions", kPositions}, {"layer_norm_epsilon", 1e-5},
                           {"activation_function", "gelu_new"}};
  std::ofstream(dir + "/config.json") << config.dump();
  torch::manual_seed(41);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, double scale, double offset = 0) {
    if (name == drop) return;
    if (name == misshape) shape.back() += 1;
    tensors.push_back({f.prefix + name, (torch::randn(shape) * scale + offset).to(f.dtype)});
  };
  add("wte.weight", {kVocab, kD}, 0.5);
  add("wpe.weight", {kPositions, kD}, 0.3);
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    add(p + "ln_1.weight", {kD}, 0.2, 1.0);
    add(p + "ln_1.bias", {kD}, 0.1);
    add(p + "attn.c_attn.weight", {kD, 3 * kD}, 0.3);
    add(p + "attn.c_attn.bias", {3 * kD}, 0.1);
    add(p + "attn.c_proj.weight", {kD, kD}, 0.3);
    add(p + "attn.c_proj.bias", {kD}, 0.1);
    add(p + "ln_2.weight", {kD}, 0.2, 1.0);
    add(p + "ln_2.bias", {kD}, 0.1);
    add(p + "mlp.c_fc.weight", {kD, 4 * kD}, 0.3);
    add(p + "mlp.c_fc.bias", {4 * kD}, 0.1);
    add(p + "mlp.c_proj.weight", {4 * kD, kD}, 0.2);
    add(p + "mlp.c_proj.bias", {kD}, 0.1);
  }
  add("ln_f.weight", {kD}, 0.2, 1.0);
  add("ln_f.bias", {kD}, 0.1);
  if (f.shards == 1) {
    ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
    return;
  }
  nlohmann::json map;
  const size_t per = (tensors.size() + f.shards - 1) / f.shards;
  for (int s = 0; s < f.shards; ++s) {
    const std::string file = "model-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(f.shards) + ".safetensors";
    std::vector<std::pair<std::string, torch::Tensor>> part(
        tensors.begin() + std::min(tensors.size(), s * per), tensors.begin() + std::min(tensors.size(), (s + 1) * per));
    for (const auto& [name, t] : part) map[name] = file;
    ASSERT_TRUE(WriteSafetensors(dir + "/" + file, part).ok());
  }
  std::ofstream(dir + "/model.safetensors.index.json") << nlohmann::json{{"weight_map", map}}.dump();
}

torch::Tensor ReadNpy(const std::string& path) {
  auto array = OpenNpy(path);
  EXPECT_TRUE(array.ok()) << array.status();
  if (!array.ok()) return torch::Tensor();
  return torch::from_blob(const_cast<uint8_t*>(array->data()), array->shape, torch::kFloat).clone();
}

void ExpectMatchesReference(const Gpt2Files& files) {
  TempDir dir;
  const std::string model_dir = dir / "model";
  WriteGpt2(model_dir, files);
  auto model = LoadLanguageModel(model_dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->num_layers(), kLayers);
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
  EXPECT_LT(RelativeError(logits, ReadNpy(dir / "reference/logits.npy")), 1e-4);
  for (size_t i = 0; i < hooks.size(); ++i) {
    SCOPED_TRACE(hooks[i].name);
    const auto expected = ReadNpy(dir / ("reference/" + hooks[i].name + ".npy"));
    ASSERT_EQ((*acts)[i].sizes(), expected.sizes());
    EXPECT_LT(RelativeError((*acts)[i], expected), 1e-4);
  }
  // Without logits the forward stops at the last layer a hook needs, with the same values.
  auto early = (*model)->Forward(ids, {hooks[1]});  // blocks.0.hook_resid_post
  ASSERT_TRUE(early.ok());
  EXPECT_TRUE(torch::equal((*early)[0], (*acts)[1]));
}

TEST(LanguageModel, Gpt2MatchesTheNumpyReference) { ExpectMatchesReference({"", torch::kFloat, 1}); }

TEST(LanguageModel, Gpt2WithPrefixedBf16ShardedWeightsMatchesTheNumpyReference) {
  ExpectMatchesReference({"transformer.", torch::kBFloat16, 2});
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
  WriteGpt2(dir / "missing", {}, /*drop=*/"h.1.mlp.c_fc.bias");
  EXPECT_THAT(error(dir / "missing"), HasSubstr("tensor \"h.1.mlp.c_fc.bias\" is missing"));
  WriteGpt2(dir / "misshapen", {}, "", /*misshape=*/"h.0.attn.c_proj.weight");
  EXPECT_THAT(error(dir / "misshapen"), HasSubstr("tensor \"h.0.attn.c_proj.weight\" in " + (dir / "misshapen") +
                                                  "/model.safetensors is [32, 33], the config wants [32, 32]"));
  WriteGpt2(dir / "other", {});
  std::ofstream(dir / "other/config.json") << R"({"model_type": "bert", "n_layer": 1})";
  EXPECT_THAT(error(dir / "other"), HasSubstr("model_type \"bert\" is not supported"));
  std::ofstream(dir / "other/config.json") << "{not json";
  EXPECT_THAT(error(dir / "other"), HasSubstr("config.json: not a JSON object"));
  std::filesystem::create_directories(dir / "empty");
  std::ofstream(dir / "empty/config.json") << R"({"model_type": "gpt2"})";
  EXPECT_THAT(error(dir / "empty"), HasSubstr("has neither model.safetensors nor model.safetensors.index.json"));

  WriteGpt2(dir / "good", {});
  auto model = LoadLanguageModel(dir / "good");
  ASSERT_TRUE(model.ok()) << model.status();
  auto h = ParseHookpoint("h.0", kLayers);
  ASSERT_TRUE(h.ok());
  EXPECT_THAT(std::string((*model)->Forward(torch::zeros({1, kPositions + 1}, torch::kLong), {*h}).status().message()),
              HasSubstr("context length 25 exceeds the model's n_positions 24"));
  EXPECT_THAT(std::string((*model)->Forward(torch::full({1, 4}, kVocab, torch::kLong), {*h}).status().message()),
              HasSubstr("outside the vocabulary of 50"));
}

}  // namespace
}  // namespace saegrid
