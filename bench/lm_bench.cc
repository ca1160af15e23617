// Training on a language model's activations: harvesting alone, training on cached shards, and
// training on the fly, at GPT-2 small's shape (12 layers, d = 768, 12 heads, vocabulary 50257,
// context 128, the hookpoint after layer 8: blocks.8.hook_resid_post, so the forward stops after
// 9 blocks) with random weights written by the benchmark. Prints JSON: tokens/s of each, how busy
// the model (the producer thread) and the SAE step were during the on-the-fly run, and the
// on-the-fly run against the baselines measured in the same run: cached training (the SAE step
// alone) and harvest-then-train in sequence (what the on-the-fly run beats only by overlapping the
// two). Two layouts of the cores: shared (the model and the step each use all of them) and split
// (each its own half; data.language_model.model_threads).
//
//   lm_bench [--layers 12] [--d 768] [--heads 12] [--vocab 50257] [--context 128] [--hook-layer 8]
//            [--sequences 64] [--latents 6144] [--k 32] [--batch 1024] [--threads 0] [--scratch /tmp]
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include "bench/bench_flags.h"
#include "engine/data/language_model_source.h"
#include "engine/lm/harvest.h"
#include "engine/runtime.h"
#include "engine/safetensors.h"
#include "engine/trainer.h"
#include "nlohmann/json.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Options {
  int64_t layers = 12, d = 768, heads = 12, vocab = 50257, context = 128, hook_layer = 8;
  int64_t sequences = 64, latents = 6144, k = 32, batch = 1024, threads = 0;
  std::string scratch = "/tmp";
};

double Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

[[noreturn]] void Die(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "lm_bench: %s: %s\n", what.c_str(), std::string(status.message()).c_str());
  std::exit(1);
}

// A GPT-2 in the Hugging Face layout with N(0, 0.02^2) weights, and random token ids.
void WriteModelAndTokens(const Options& o, const fs::path& dir) {
  fs::create_directories(dir / "model");
  const json config = {{"model_type", "gpt2"}, {"n_layer", o.layers}, {"n_embd", o.d}, {"n_head", o.heads},
                       {"vocab_size", o.vocab}, {"n_positions", std::max<int64_t>(1024, o.context)},
                       {"layer_norm_epsilon", 1e-5}, {"activation_function", "gelu_new"}};
  std::ofstream(dir / "model/config.json") << config.dump();
  torch::manual_seed(0);
  const int64_t d = o.d;
  auto w = [](std::vector<int64_t> shape) { return torch::randn(shape) * 0.02; };
  std::vector<std::pair<std::string, torch::Tensor>> t = {{"wte.weight", w({o.vocab, d})},
                                                          {"wpe.weight", w({std::max<int64_t>(1024, o.context), d})}};
  for (int64_t l = 0; l < o.layers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    t.push_back({p + "ln_1.weight", torch::ones({d})});
    t.push_back({p + "ln_1.bias", torch::zeros({d})});
    t.push_back({p + "attn.c_attn.weight", w({d, 3 * d})});
    t.push_back({p + "attn.c_attn.bias", torch::zeros({3 * d})});
    t.push_back({p + "attn.c_proj.weight", w({d, d})});
    t.push_back({p + "attn.c_proj.bias", torch::zeros({d})});
    t.push_back({p + "ln_2.weight", torch::ones({d})});
    t.push_back({p + "ln_2.bias", torch::zeros({d})});
    t.push_back({p + "mlp.c_fc.weight", w({d, 4 * d})});
    t.push_back({p + "mlp.c_fc.bias", torch::zeros({4 * d})});
    t.push_back({p + "mlp.c_proj.weight", w({4 * d, d})});
    t.push_back({p + "mlp.c_proj.bias", torch::zeros({d})});
  }
  t.push_back({"ln_f.weight", torch::ones({d})});
  t.push_back({"ln_f.bias", torch::zeros({d})});
  auto st = saegrid::WriteSafetensors((dir / "model/model.safetensors").string(), t);
  if (!st.ok()) Die("writing the model", st);
  const torch::Tensor ids = torch::randint(1, o.vocab, {o.sequences * o.context}, torch::kLong).to(torch::kInt);
  std::vector<uint16_t> flat(ids.numel());
  for (int64_t i = 0; i < ids.numel(); ++i) flat[i] = static_cast<uint16_t>(ids[i].item<int>());
  std::ofstream out(dir / "tokens.bin", std::ios::binary);
  out.write(reinterpret_cast<const char*>(flat.data()), static_cast<std::streamsize>(flat.size() * 2));
}

saegrid::TrainConfig SaeConfig(const Options& o, const fs::path& out) {
  saegrid::TrainConfig c;
  c.model.num_latents = o.latents;
  c.model.k = o.k;
  c.model.geometric_median_samples = o.batch;
  c.data.batch_size = o.batch;
  c.data.eval_fraction = 0;
  c.data.eval_max_tokens = o.batch;
  c.training.total_tokens = (o.sequences * o.context / o.batch) * o.batch;
  c.training.log_every_steps = 1 << 30;
  c.checkpoint.output_dir = out.string();
  c.checkpoint.resume = false;
  c.runtime.num_threads = static_cast<int>(o.threads);
  return c;
}

// Trains the whole config (one epoch of the tokens) and returns its figures; the trainer is built
// (and its initialisation sample read) before the clock starts.
json TimeTraining(const saegrid::TrainConfig& config) {
  auto trainer = saegrid::Trainer::Create(config);
  if (!trainer.ok()) Die("creating the trainer", trainer.status());
  const auto start = std::chrono::steady_clock::now();
  double step_seconds = 0;
  int64_t tokens = 0;
  while ((*trainer)->step() < (*trainer)->total_steps()) {
    auto m = (*trainer)->Step(/*figures=*/false);
    if (!m.ok()) Die("training", m.status());
    step_seconds += m->step_seconds;
    tokens = m->tokens;
  }
  const double wall = Since(start);
  return {{"tokens", tokens}, {"seconds", wall}, {"tokens_per_second", tokens / wall},
          {"step_seconds", step_seconds}};
}

}  // namespace

int main(int argc, char** argv) {
  saegrid::ReexecIfBlasMisdetected(argv);
  using saegrid::FlagSpec;
  Options o;
  constexpr int64_t kBig = int64_t{1} << 40;
  saegrid::bench::ParseFlagsOrExit(argc, argv,
                                   {{"--layers", FlagSpec::Int(&o.layers, 1, 1024)},
                                    {"--d", FlagSpec::Int(&o.d, 1, 1 << 16)},
                                    {"--heads", FlagSpec::Int(&o.heads, 1, 1024)},
                                    {"--vocab", FlagSpec::Int(&o.vocab, 2, 65536)},
                                    {"--context", FlagSpec::Int(&o.context, 1, 1 << 16)},
                                    {"--hook-layer", FlagSpec::Int(&o.hook_layer, 0, 1023)},
                                    {"--sequences", FlagSpec::Int(&o.sequences, 1, kBig)},
                                    {"--latents", FlagSpec::Int(&o.latents, 1, kBig)},
                                    {"--k", FlagSpec::Int(&o.k, 1, kBig)},
                                    {"--batch", FlagSpec::Int(&o.batch, 1, kBig)},
                                    {"--threads", FlagSpec::Int(&o.threads, 0, 1 << 16)},
                                    {"--scratch", FlagSpec::String(&o.scratch)}});
  if (o.hook_layer >= o.layers || o.d % o.heads != 0 || o.sequences * o.context < o.batch) {
    std::fprintf(stderr, "lm_bench: needs --hook-layer < --layers, --d divisible by --heads, and at least one batch of tokens\n");
    return 2;
  }
  const int cores = saegrid::ConfigureThreads(static_cast<int>(o.threads));
  const fs::path dir = fs::path(o.scratch) / ("saegrid-lm-bench-" + std::to_string(getpid()));
  WriteModelAndTokens(o, dir);
  const std::string hookpoint = "blocks." + std::to_string(o.hook_layer) + ".hook_resid_post";
  saegrid::LanguageModelDataConfig lm;
  lm.model_path = (dir / "model").string();
  lm.tokens_path = (dir / "tokens.bin").string();
  lm.context_length = o.context;
  lm.hookpoint = hookpoint;
  lm.sequences_per_forward = 8;

  // Each layout: harvesting alone with the model's threads, training on the cached shards with
  // the trainer's, and the on-the-fly run with both at once.
  auto measure = [&](const std::string& name, int trainer_threads, int model_threads) -> json {
    saegrid::ConfigureThreads(model_threads);
    auto opened = saegrid::OpenLanguageModelData(lm, torch::kCPU);
    if (!opened.ok()) Die("opening the model", opened.status());
    saegrid::HarvestOptions harvest;
    harvest.output_dir = (dir / ("harvest-" + name)).string();
    harvest.hook = opened->hook;
    harvest.device = torch::kCPU;
    harvest.sequences_per_shard = 16;
    harvest.sequences_per_batch = lm.sequences_per_forward;
    auto start = std::chrono::steady_clock::now();
    auto harvested = saegrid::HarvestActivations(*opened->model, *opened->tokens, harvest);
    if (!harvested.ok()) Die("harvesting", harvested.status());
    const double harvest_seconds = Since(start);
    const int64_t harvest_tokens = o.sequences * o.context;
    opened->model.reset();

    saegrid::TrainConfig cached = SaeConfig(o, dir / ("cached-" + name));
    cached.runtime.num_threads = trainer_threads;
    cached.data.path = harvest.output_dir + "/manifest.json";
    const json cached_run = TimeTraining(cached);

    saegrid::TrainConfig fly = SaeConfig(o, dir / ("fly-" + name));
    fly.runtime.num_threads = trainer_threads;
    fly.data.language_model = lm;
    fly.data.language_model.model_threads = model_threads;
    auto trainer = saegrid::Trainer::Create(fly);
    if (!trainer.ok()) Die("creating the on-the-fly trainer", trainer.status());
    start = std::chrono::steady_clock::now();
    int64_t tokens = 0;
    while ((*trainer)->step() < (*trainer)->total_steps()) {
      auto m = (*trainer)->Step(/*figures=*/false);
      if (!m.ok()) Die("training on the fly", m.status());
      tokens = m->tokens;
    }
    const double fly_seconds = Since(start);
    // The activity counts from the trainer's creation; its initialisation sample is computed on
    // the calling thread, outside it.
    const saegrid::SourceActivity activity = (*trainer)->data_activity();
    trainer->reset();
    const double cached_seconds = cached_run["seconds"].get<double>();
    const double serial = harvest_seconds * tokens / harvest_tokens + cached_seconds;
    return {{"trainer_threads", trainer_threads},
            {"model_threads", model_threads},
            {"harvest", {{"tokens", harvest_tokens}, {"seconds", harvest_seconds},
                         {"tokens_per_second", harvest_tokens / harvest_seconds}}},
            {"train_cached", cached_run},
            {"train_on_the_fly",
             {{"tokens", tokens},
              {"seconds", fly_seconds},
              {"tokens_per_second", tokens / fly_seconds},
              // Fractions of the on-the-fly run's wall time: the model busy in the producer
              // thread, and the SAE step busy (not waiting for a batch). Their sum above 1 is
              // the overlap.
              {"model_busy_fraction", activity.producer_busy_seconds / fly_seconds},
              {"sae_step_busy_fraction", 1.0 - activity.consumer_wait_seconds / fly_seconds},
              {"trainer_waited_seconds", activity.consumer_wait_seconds}}},
            // Baselines from this layout: cached training (the SAE step alone), and harvesting
            // then training in sequence. Above 1 against the serial baseline: the overlap pays.
            {"on_the_fly_vs_cached_throughput", cached_seconds / fly_seconds},
            {"on_the_fly_vs_serial_speedup", serial / fly_seconds}};
  };
  // Shared: the model and the SAE step each use every core (they compete while they overlap).
  // Split: each has its own half of the cores.
  const int half = std::max(1, cores / 2);
  json report = {
      {"benchmark", "language_model_activations_cpu"},
      {"cores", cores},
      {"blas_core", saegrid::BlasCoreName()},
      {"cpu", {{"native_bf16", saegrid::CpuHasNativeBFloat16()}}},
      {"model", {{"layers", o.layers}, {"d", o.d}, {"heads", o.heads}, {"vocab", o.vocab}, {"context", o.context},
                 {"hookpoint", hookpoint}, {"blocks_run", o.hook_layer + 1}}},
      {"sae", {{"latents", o.latents}, {"k", o.k}, {"batch", o.batch}}},
      {"shared_cores", measure("shared", cores, cores)},
      {"split_cores", measure("split", std::max(1, cores - half), half)}};
  std::printf("%s\n", report.dump(2).c_str());
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}
