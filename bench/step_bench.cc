// One TopK SAE training step (forward, backward, decoder projection, Adam, renormalisation) of
// the sparse engine and of the dense autograd reference, in the same run, on the same data.
// Prints JSON: per-path median step time, peak RSS during the path, and the speed ratio.
// Defaults: B = 4096, d = 768, n = 32768, k = 32, fp32 (the foundation issue's benchmark).
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "engine/optimizer.h"
#include "engine/runtime.h"
#include "engine/sae_model.h"
#include "nlohmann/json.hpp"

namespace {

int64_t Flag(int argc, char** argv, const std::string& name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (name == argv[i]) return std::atoll(argv[i + 1]);
  }
  return fallback;
}

// Peak resident set since the last reset, from /proc (VmHWM), in bytes.
int64_t PeakRssBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  }
  return -1;
}

void ResetPeakRss() {
  std::ofstream("/proc/self/clear_refs") << "5";
}

nlohmann::json TimePath(saegrid::SaeModel& model, saegrid::Adam& adam, const torch::Tensor& x,
                        saegrid::ComputePath path, int repeats) {
  ResetPeakRss();
  std::vector<double> seconds;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (auto& p : model.params().All()) p.mutable_grad().reset();
    auto out = model.TrainingForward(x, torch::Tensor(), path);
    out.loss.backward();
    model.ProjectDecoderGradient();
    adam.Step(1e-4);
    model.RenormalizeDecoder();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  return {{"median_step_seconds", seconds[seconds.size() / 2]},
          {"min_step_seconds", seconds.front()},
          {"tokens_per_second", x.size(0) / seconds[seconds.size() / 2]},
          {"peak_rss_bytes", PeakRssBytes()}};
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t batch = Flag(argc, argv, "--batch", 4096);
  const int64_t d = Flag(argc, argv, "--d", 768);
  const int64_t n = Flag(argc, argv, "--latents", 32768);
  const int64_t k = Flag(argc, argv, "--k", 32);
  const int repeats = static_cast<int>(Flag(argc, argv, "--repeats", 3));
  const int threads = saegrid::ConfigureThreads(static_cast<int>(Flag(argc, argv, "--threads", 0)));

  saegrid::ModelConfig config;
  config.k = k;
  config.num_latents = n;
  config = saegrid::ResolveModelConfig(config, d);
  torch::manual_seed(0);
  const auto x = torch::randn({batch, d});
  saegrid::SaeModel model(config);
  model.Initialize(x.narrow(0, 0, std::min<int64_t>(batch, 4096)), 0);
  saegrid::Adam adam(model.params().All(), saegrid::OptimizerConfig{});

  // Warm-up (allocator, BLAS threads) outside the timings.
  TimePath(model, adam, x, saegrid::ComputePath::kSparse, 1);
  const auto sparse = TimePath(model, adam, x, saegrid::ComputePath::kSparse, repeats);
  const auto dense = TimePath(model, adam, x, saegrid::ComputePath::kDenseReference, repeats);
  const double ratio = dense["median_step_seconds"].get<double>() / sparse["median_step_seconds"].get<double>();
  nlohmann::json report = {
      {"benchmark", "topk_training_step"},
      {"batch", batch}, {"d_in", d}, {"num_latents", n}, {"k", k}, {"dtype", "float32"},
      {"threads", threads}, {"repeats", repeats},
      {"sparse", sparse},
      {"dense_reference", dense},
      {"speedup_sparse_vs_dense", ratio},
      {"dense_bxn_fp32_bytes", batch * n * 4},
      {"target_speedup", 3.0},
      {"meets_target", ratio >= 3.0}};
  std::printf("%s\n", report.dump(2).c_str());
  return 0;
}
