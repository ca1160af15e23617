// The CPU training step of a TopK SAE: the sparse engine (chunked encoder with a running top-k,
// sparse kernels, fused optimizer pass) in float32 and with the bfloat16 encoder, against the
// dense LibTorch autograd reference step, all in the same run on the same data. Each measurement
// runs in a fresh child process of this binary, so its peak resident memory is its own.
//
// Prints JSON: per path the median step time, the phase split, the peak RSS and what the step
// adds above the persistent state (parameters, optimizer moments, data): its gradients plus its
// working memory, against the B x n float32 matrix the chunked encoder avoids; the speed ratios and the targets;
// the optimizer pass (fused vs separate LibTorch ops) and the selection (running top-k vs
// torch::topk) on their own; and a wide model (n = 262144 at B = 1024) in float32.
//
//   step_bench [--batch 4096] [--d 768] [--latents 32768] [--k 32] [--repeats 3] [--threads 0]
//              [--large-latents 262144] [--large-batch 1024] [--skip-large]
#include <unistd.h>

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "bench/bench_flags.h"
#include "bench/self_child.h"
#include "engine/chunked_encoder.h"
#include "engine/optimizer.h"
#include "engine/runtime.h"
#include "engine/sae_model.h"
#include "kernels/running_topk.h"
#include "nlohmann/json.hpp"

namespace {


using Clock = std::chrono::steady_clock;
using nlohmann::json;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A field of /proc/self/status in bytes (VmRSS: now, VmHWM: peak since the last reset).
int64_t StatusBytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::atoll(line.c_str() + field.size() + 1) * 1024;
  }
  return -1;
}

void ResetPeakRss() { std::ofstream("/proc/self/clear_refs") << "5"; }

bool CpuHasFlag(const std::string& flag) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) == 0) return (line + " ").find(" " + flag + " ") != std::string::npos;
  }
  return false;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Shape {
  int64_t batch, d, n, k;
};

// One path's steps in this process: `path` is dense_fp32, sparse_fp32 or sparse_bf16.
json MeasurePath(const std::string& path, const Shape& s, int repeats) {
  saegrid::ModelConfig config;
  config.k = s.k;
  config.num_latents = s.n;
  config.compute_dtype = path == "sparse_bf16" ? saegrid::ComputeDtype::kBFloat16
                                               : saegrid::ComputeDtype::kFloat32;
  config = saegrid::ResolveModelConfig(config, s.d);
  torch::manual_seed(0);
  const auto x = torch::randn({s.batch, s.d});
  saegrid::SaeModel model(config);
  model.Initialize(x.narrow(0, 0, std::min<int64_t>(s.batch, 4096)), 0);
  saegrid::OptimizerConfig optimizer_config;
  saegrid::Adam adam(model.params().All(), optimizer_config);
  const bool dense = path == "dense_fp32";
  const std::vector<bool> unit_norm_rows = {false, false, true, false};

  saegrid::StepProfile profile;
  double dense_forward = 0;  // the reference's forward is one piece
  auto step = [&] {
    for (auto& p : model.params().All()) p.mutable_grad().reset();
    saegrid::ForwardOutput out;
    if (dense) {
      const auto start = Clock::now();
      out = model.TrainingForward(x, torch::Tensor(), saegrid::ComputePath::kDenseReference);
      dense_forward += Seconds(start);
    } else {
      saegrid::ParallelForward parallel;
      parallel.profile = &profile;
      out = *model.ParallelTrainingForward(x, torch::Tensor(), parallel);
    }
    auto start = Clock::now();
    out.loss.backward();
    profile.backward += Seconds(start);
    start = Clock::now();
    if (dense) {
      // The reference update: separate LibTorch passes.
      model.ProjectDecoderGradient();
      adam.Step(1e-4);
      model.RenormalizeDecoder();
    } else {
      adam.FusedStep(1e-4, 1.0, unit_norm_rows);
    }
    profile.optimizer += Seconds(start);
  };

  step();  // warm-up: allocator, BLAS threads, gradients and optimizer state allocated
  int64_t gradient_bytes = 0;
  for (const auto& p : model.params().All()) gradient_bytes += p.numel() * 4;
  // What stays between steps without the gradients, which the step frees and recreates.
  const int64_t persistent = StatusBytes("VmRSS") - gradient_bytes;
  profile = saegrid::StepProfile{};
  dense_forward = 0;
  ResetPeakRss();
  std::vector<double> seconds;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    step();
    seconds.push_back(Seconds(start));
  }
  const int64_t peak = StatusBytes("VmHWM");
  const double per = 1.0 / repeats;
  return {{"median_step_seconds", Median(seconds)},
          {"min_step_seconds", *std::min_element(seconds.begin(), seconds.end())},
          {"tokens_per_second", s.batch / Median(seconds)},
          {"phase_seconds",
           dense ? json{{"forward", dense_forward * per},
                        {"backward", profile.backward * per},
                        {"optimizer", profile.optimizer * per}}
                 : json{{"encoder", profile.encoder * per},
                        {"topk", profile.topk * per},
                        {"decode_and_loss", profile.decode * per},
                        {"backward", profile.backward * per},
                        {"optimizer", profile.optimizer * per}}},
          {"persistent_state_bytes", persistent},
          {"gradient_bytes", gradient_bytes},
          {"peak_rss_bytes", peak},
          // Everything the step adds on top of parameters, optimizer state and data: the
          // gradients plus its working memory.
          {"step_peak_above_state_bytes", peak - persistent},
          {"step_working_bytes", std::max<int64_t>(0, peak - persistent - gradient_bytes)}};
}

// The optimizer update of an [n, d] decoder and encoder alone: fused pass vs LibTorch ops.
json MeasureOptimizer(const Shape& s, int repeats) {
  saegrid::ModelConfig config;
  config.k = s.k;
  config.num_latents = s.n;
  config = saegrid::ResolveModelConfig(config, s.d);
  saegrid::SaeModel model(config);
  torch::manual_seed(1);
  model.Initialize(torch::randn({256, s.d}), 0);
  for (auto& p : model.params().All()) p.mutable_grad() = torch::randn_like(p) * 1e-3;
  saegrid::Adam reference(model.params().All(), saegrid::OptimizerConfig{});
  saegrid::Adam fused(model.params().All(), saegrid::OptimizerConfig{});
  std::vector<double> separate_s, fused_s;
  for (int r = 0; r < repeats + 1; ++r) {
    auto start = Clock::now();
    model.ProjectDecoderGradient();
    reference.Step(1e-4);
    model.RenormalizeDecoder();
    if (r > 0) separate_s.push_back(Seconds(start));
    start = Clock::now();
    fused.FusedStep(1e-4, 1.0, {false, false, true, false});
    if (r > 0) fused_s.push_back(Seconds(start));
  }
  return {{"separate_ops_seconds", Median(separate_s)},
          {"fused_pass_seconds", Median(fused_s)},
          {"speedup", Median(separate_s) / Median(fused_s)}};
}

// Selecting the top k of a [B, n] float32 matrix: torch::topk on the whole matrix vs the
// running top-k fed in the chunks the encoder would produce.
json MeasureSelection(const Shape& s, int repeats) {
  torch::manual_seed(2);
  const auto pre = torch::randn({s.batch, s.n});
  const int64_t chunk = saegrid::EncoderChunkLatents(s.batch, s.n, 0);
  // Contiguous chunks, as the encoder produces them.
  std::vector<torch::Tensor> chunks;
  for (int64_t begin = 0; begin < s.n; begin += chunk) {
    chunks.push_back(pre.narrow(1, begin, std::min(chunk, s.n - begin)).contiguous());
  }
  std::vector<double> topk_s, running_s;
  for (int r = 0; r < repeats + 1; ++r) {
    auto start = Clock::now();
    const auto reference = pre.topk(s.k, 1, true, true);
    if (r > 0) topk_s.push_back(Seconds(start));
    start = Clock::now();
    saegrid::kernels::RunningTopK running(s.batch, s.k);
    for (size_t i = 0; i < chunks.size(); ++i) running.Offer(chunks[i], static_cast<int64_t>(i) * chunk);
    const auto selected = running.Finish();
    if (r > 0) running_s.push_back(Seconds(start));
    // Values, not ids: tied values may be taken in another order (the running top-k takes the
    // lower latent id).
    TORCH_CHECK(torch::equal(selected.first, std::get<0>(reference)), "selections differ");
  }
  return {{"torch_topk_seconds", Median(topk_s)},
          {"running_topk_seconds", Median(running_s)},
          {"chunk_latents", chunk},
          {"speedup", Median(topk_s) / Median(running_s)}};
}


}  // namespace

int main(int argc, char** argv) {
  saegrid::ReexecIfBlasMisdetected(argv);
  using saegrid::FlagSpec;
  int64_t batch = 4096, d = 768, latents = 32768, k = 32, repeats_flag = 3, threads_flag = 0;
  int64_t large_batch = 1024, large_latents = 262144;
  std::string measure;
  bool skip_large = false;
  constexpr int64_t kBig = int64_t{1} << 40;
  saegrid::bench::ParseFlagsOrExit(argc, argv,
                                   {{"--batch", FlagSpec::Int(&batch, 1, kBig)},
                                    {"--d", FlagSpec::Int(&d, 1, kBig)},
                                    {"--latents", FlagSpec::Int(&latents, 1, kBig)},
                                    {"--k", FlagSpec::Int(&k, 1, kBig)},
                                    {"--repeats", FlagSpec::Int(&repeats_flag, 1, 1000)},
                                    {"--threads", FlagSpec::Int(&threads_flag, 0, 1 << 16)},
                                    {"--large-batch", FlagSpec::Int(&large_batch, 1, kBig)},
                                    {"--large-latents", FlagSpec::Int(&large_latents, 1, kBig)},
                                    {"--measure", FlagSpec::String(&measure)},
                                    {"--skip-large", FlagSpec::Switch(&skip_large)}});
  const Shape shape{batch, d, latents, k};
  const int repeats = static_cast<int>(repeats_flag);
  const int threads = saegrid::ConfigureThreads(static_cast<int>(threads_flag));

  if (!measure.empty()) {
    json result;
    if (measure == "optimizer") {
      result = MeasureOptimizer(shape, repeats);
    } else if (measure == "selection") {
      result = MeasureSelection(shape, repeats);
    } else {
      result = MeasurePath(measure, shape, repeats);
    }
    std::printf("%s\n", result.dump().c_str());
    return 0;
  }

  auto shape_args = [&](const Shape& s, int reps) {
    return "--batch " + std::to_string(s.batch) + " --d " + std::to_string(s.d) + " --latents " +
           std::to_string(s.n) + " --k " + std::to_string(s.k) + " --repeats " +
           std::to_string(reps) + " --threads " + std::to_string(threads);
  };
  const std::string args = shape_args(shape, repeats);
  const json dense = saegrid::bench::RunSelf("--measure dense_fp32 " + args);
  const json sparse = saegrid::bench::RunSelf("--measure sparse_fp32 " + args);
  const json bf16 = saegrid::bench::RunSelf("--measure sparse_bf16 " + args);
  const json optimizer = saegrid::bench::RunSelf("--measure optimizer " + args);
  const json selection = saegrid::bench::RunSelf("--measure selection " + args);
  for (const json* part : {&dense, &sparse, &bf16, &optimizer, &selection}) {
    if (part->is_discarded() || part->contains("error")) {
      std::fprintf(stderr, "step_bench: a measurement failed: %s\n", part->dump().c_str());
      return 1;
    }
  }

  const double bxn_bytes = static_cast<double>(shape.batch) * shape.n * 4;
  const double sparse_vs_dense = dense["median_step_seconds"].get<double>() /
                                 sparse["median_step_seconds"].get<double>();
  const double bf16_vs_sparse = sparse["median_step_seconds"].get<double>() /
                                bf16["median_step_seconds"].get<double>();
  const double transient_fraction = sparse["step_peak_above_state_bytes"].get<double>() / bxn_bytes;
  const bool amx = CpuHasFlag("amx_bf16");
  const bool avx512_bf16 = CpuHasFlag("avx512_bf16");
  json report = {
      {"benchmark", "topk_training_step_cpu"},
      {"batch", shape.batch}, {"d_in", shape.d}, {"num_latents", shape.n}, {"k", shape.k},
      {"threads", threads}, {"repeats", repeats}, {"blas_core", saegrid::BlasCoreName()},
      {"cpu", {{"amx_bf16", amx}, {"avx512_bf16", avx512_bf16}}},
      {"dense_reference_fp32", dense},
      {"sparse_fp32", sparse},
      {"sparse_bf16", bf16},
      {"optimizer_pass", optimizer},
      {"selection", selection},
      {"bxn_fp32_bytes", bxn_bytes},
      {"speedup_sparse_fp32_vs_dense", sparse_vs_dense},
      {"speedup_bf16_vs_sparse_fp32", bf16_vs_sparse},
      {"sparse_step_peak_above_state_fraction_of_bxn", transient_fraction},
      {"encoder_chunk_bytes", 4.0 * shape.batch * saegrid::EncoderChunkLatents(shape.batch, shape.n, 0)},
      {"targets",
       {{"sparse_fp32_vs_dense_at_least", 4.0},
        {"sparse_fp32_vs_dense_met", sparse_vs_dense >= 4.0},
        {"bf16_vs_sparse_fp32_at_least", 2.0},
        {"bf16_vs_sparse_fp32_met", bf16_vs_sparse >= 2.0},
        // Without AMX (or AVX512-BF16) oneDNN emulates bf16 and the encoder matmul is no faster.
        {"bf16_target_applies", amx},
        {"step_peak_above_state_below_fraction_of_bxn", 0.5},
        {"step_memory_met", transient_fraction < 0.5}}}};

  if (!skip_large) {
    const Shape large{large_batch, shape.d, large_latents, shape.k};
    const json wide = saegrid::bench::RunSelf("--measure sparse_fp32 " + shape_args(large, 2));
    const double limit = 24.0 * (int64_t{1} << 30);
    report["wide_model_sparse_fp32"] = {
        {"batch", large.batch}, {"num_latents", large.n}, {"result", wide},
        {"peak_within_24_gib", wide.contains("peak_rss_bytes") &&
                                   wide["peak_rss_bytes"].get<double>() < limit}};
  }
  std::printf("%s\n", report.dump(2).c_str());
  return 0;
}
