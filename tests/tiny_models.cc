#include "tests/tiny_models.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "engine/safetensors.h"

namespace saegrid::testing {

ModelSpec Gpt2() {
  ModelSpec m;
  m.config = {{"model_type", "gpt2"}, {"n_layer", kLayers}, {"n_embd", kD}, {"n_head", kHeads},
              {"vocab_size", kVocab}, {"n_positions", kPositions}, {"layer_norm_epsilon", 1e-5},
              {"activation_function", "gelu_new"}};
  m.tensors = {{"wte.weight", {kVocab, kD}, 0.5}, {"wpe.weight", {kPositions, kD}, 0.3}};
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    for (const char* ln : {"ln_1", "ln_2"}) {
      m.tensors.push_back({p + ln + ".weight", {kD}, 0.2, 1.0});
      m.tensors.push_back({p + ln + ".bias", {kD}, 0.1});
    }
    m.tensors.push_back({p + "attn.c_attn.weight", {kD, 3 * kD}});
    m.tensors.push_back({p + "attn.c_attn.bias", {3 * kD}, 0.1});
    m.tensors.push_back({p + "attn.c_proj.weight", {kD, kD}});
    m.tensors.push_back({p + "attn.c_proj.bias", {kD}, 0.1});
    m.tensors.push_back({p + "mlp.c_fc.weight", {kD, 4 * kD}});
    m.tensors.push_back({p + "mlp.c_fc.bias", {4 * kD}, 0.1});
    m.tensors.push_back({p + "mlp.c_proj.weight", {4 * kD, kD}, 0.2});
    m.tensors.push_back({p + "mlp.c_proj.bias", {kD}, 0.1});
  }
  m.tensors.push_back({"ln_f.weight", {kD}, 0.2, 1.0});
  m.tensors.push_back({"ln_f.bias", {kD}, 0.1});
  return m;
}

ModelSpec GptNeox(bool parallel_residual) {
  ModelSpec m;
  m.config = {{"model_type", "gpt_neox"}, {"num_hidden_layers", kLayers}, {"hidden_size", kD},
              {"num_attention_heads", kHeads}, {"intermediate_size", 3 * kD}, {"vocab_size", kVocab},
              {"max_position_embeddings", kPositions}, {"rotary_pct", 0.5}, {"rotary_emb_base", 10000},
              {"layer_norm_eps", 1e-5}, {"use_parallel_residual", parallel_residual}, {"hidden_act", "gelu"}};
  m.tensors = {{"embed_in.weight", {kVocab, kD}, 0.5}};
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    for (const char* ln : {"input_layernorm", "post_attention_layernorm"}) {
      m.tensors.push_back({p + ln + ".weight", {kD}, 0.2, 1.0});
      m.tensors.push_back({p + ln + ".bias", {kD}, 0.1});
    }
    m.tensors.push_back({p + "attention.query_key_value.weight", {3 * kD, kD}});
    m.tensors.push_back({p + "attention.query_key_value.bias", {3 * kD}, 0.1});
    m.tensors.push_back({p + "attention.dense.weight", {kD, kD}});
    m.tensors.push_back({p + "attention.dense.bias", {kD}, 0.1});
    m.tensors.push_back({p + "mlp.dense_h_to_4h.weight", {3 * kD, kD}});
    m.tensors.push_back({p + "mlp.dense_h_to_4h.bias", {3 * kD}, 0.1});
    m.tensors.push_back({p + "mlp.dense_4h_to_h.weight", {kD, 3 * kD}, 0.2});
    m.tensors.push_back({p + "mlp.dense_4h_to_h.bias", {kD}, 0.1});
  }
  m.tensors.push_back({"final_layer_norm.weight", {kD}, 0.2, 1.0});
  m.tensors.push_back({"final_layer_norm.bias", {kD}, 0.1});
  m.tensors.push_back({"embed_out.weight", {kVocab, kD}, 0.3});
  return m;
}

ModelSpec Llama(const std::string& type) {
  const bool qwen = type == "qwen2";
  const int64_t kv_heads = 2, head_dim = kD / kHeads, inner = 3 * kD;
  ModelSpec m;
  m.config = {{"model_type", type}, {"num_hidden_layers", kLayers}, {"hidden_size", kD},
              {"num_attention_heads", kHeads}, {"num_key_value_heads", kv_heads}, {"intermediate_size", inner},
              {"vocab_size", kVocab}, {"max_position_embeddings", kPositions}, {"rms_norm_eps", 1e-6},
              {"rope_theta", 500.0}, {"hidden_act", "silu"}, {"tie_word_embeddings", qwen}, {"rope_scaling", nullptr}};
  m.tensors = {{"embed_tokens.weight", {kVocab, kD}, 0.5}};
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    m.tensors.push_back({p + "input_layernorm.weight", {kD}, 0.2, 1.0});
    m.tensors.push_back({p + "post_attention_layernorm.weight", {kD}, 0.2, 1.0});
    m.tensors.push_back({p + "self_attn.q_proj.weight", {kHeads * head_dim, kD}});
    m.tensors.push_back({p + "self_attn.k_proj.weight", {kv_heads * head_dim, kD}});
    m.tensors.push_back({p + "self_attn.v_proj.weight", {kv_heads * head_dim, kD}});
    if (qwen) {
      m.tensors.push_back({p + "self_attn.q_proj.bias", {kHeads * head_dim}, 0.1});
      m.tensors.push_back({p + "self_attn.k_proj.bias", {kv_heads * head_dim}, 0.1});
      m.tensors.push_back({p + "self_attn.v_proj.bias", {kv_heads * head_dim}, 0.1});
    }
    m.tensors.push_back({p + "self_attn.o_proj.weight", {kD, kHeads * head_dim}});
    m.tensors.push_back({p + "mlp.gate_proj.weight", {inner, kD}});
    m.tensors.push_back({p + "mlp.up_proj.weight", {inner, kD}});
    m.tensors.push_back({p + "mlp.down_proj.weight", {kD, inner}, 0.2});
  }
  m.tensors.push_back({"norm.weight", {kD}, 0.2, 1.0});
  if (!qwen) m.tensors.push_back({"lm_head.weight", {kVocab, kD}, 0.3});
  return m;
}

void WriteModel(const std::string& dir, const ModelSpec& spec, const Layout& layout, const std::string& drop,
                const std::string& misshape) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << spec.config.dump();
  torch::manual_seed(41);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& t : spec.tensors) {
    if (t.name == drop) continue;
    auto shape = t.shape;
    if (t.name == misshape) shape.back() += 1;
    // An untied head (embed_out, lm_head) sits outside the wrapper prefix, as in the real files.
    const bool outside = t.name == "embed_out.weight" || t.name == "lm_head.weight";
    tensors.push_back({(outside ? "" : layout.prefix) + t.name, (torch::randn(shape) * t.scale + t.offset).to(layout.dtype)});
  }
  if (layout.shards == 1) {
    ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
    return;
  }
  nlohmann::json map;
  const size_t per = (tensors.size() + layout.shards - 1) / layout.shards;
  for (int s = 0; s < layout.shards; ++s) {
    const std::string file = "model-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(layout.shards) + ".safetensors";
    std::vector<std::pair<std::string, torch::Tensor>> part(
        tensors.begin() + std::min(tensors.size(), s * per), tensors.begin() + std::min(tensors.size(), (s + 1) * per));
    for (const auto& [name, t] : part) map[name] = file;
    ASSERT_TRUE(WriteSafetensors(dir + "/" + file, part).ok());
  }
  std::ofstream(dir + "/model.safetensors.index.json") << nlohmann::json{{"weight_map", map}}.dump();
}

void WriteTokenIds(const std::string& path, const torch::Tensor& ids) {
  const torch::Tensor flat = ids.reshape(-1).to(torch::kLong);
  std::vector<uint16_t> out(static_cast<size_t>(flat.numel()));
  const int64_t* p = flat.data_ptr<int64_t>();
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint16_t>(p[i]);
  std::ofstream file(path, std::ios::binary);
  file.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size() * sizeof(uint16_t)));
  ASSERT_TRUE(file.good()) << "cannot write " << path;
}

}  // namespace saegrid::testing
