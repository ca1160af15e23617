// The training step on a device (the GPU machine's benchmark; on the CPU a rehearsal at small
// sizes): for each n, the real trainer's step (synthetic data, AuxK, dead-latent tracking, the
// fused optimizer pass) on the device's own kernels and on the portable LibTorch-operator
// kernels, both with the bfloat16 encoder, against the dense LibTorch autograd step in the same
// run on the same shape; each one's ratio to the step's lower bound on one H200; the peak device
// memory; the host synchronisations per step (engine/host_reads.h); and a very wide model (n =
// 1,048,576 by default) trained for a few steps on the device's kernels alone.
//
// Prints JSON. Each measurement runs in a fresh child process of this binary, so that its peak
// memory is its own and a path that runs out of memory does not end the others.
//
//   device_step_bench [--device cuda] [--batch 8192] [--d 768] [--k 32]
//                     [--latents 32768,131072] [--huge-latents 1048576] [--repeats 10]
//                     [--threads 0] [--skip-dense] [--skip-huge]
#include <unistd.h>

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#if defined(SAEGRID_BENCH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_flags.h"
#include "bench/self_child.h"
#include "engine/device.h"
#include "engine/host_reads.h"
#include "engine/optimizer.h"
#include "engine/runtime.h"
#include "engine/sae_model.h"
#include "engine/trainer.h"
#include "kernels/dispatch.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double Seconds(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct Shape {
  int64_t batch, d, n, k;
};

// The lower bound of one step on one H200 with top-k fused into the GEMM: the bf16 encoder GEMM
// at ~790 TFLOP/s plus the optimizer's ~56 bytes per n*d at ~4.3 TB/s and the compulsory traffic.
// The three shapes the issue names use its figures; other shapes the two main terms.
double H200LowerBoundSeconds(const Shape& s) {
  if (s.batch == 8192 && s.d == 768) {
    if (s.n == 32768) return 0.90e-3;
    if (s.n == 131072) return 3.6e-3;
    if (s.n == 1048576) return 29e-3;
  }
  const double gemm = 2.0 * s.batch * s.d * s.n / 790e12;
  const double adam = 56.0 * s.n * s.d / 4.3e12;
  return gemm + adam;
}

void Synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// Peak memory: the CUDA caching allocator's peak allocated bytes on a GPU, the process's peak
// resident set on the CPU.
void ResetPeakMemory(const torch::Device& device) {
#if defined(SAEGRID_BENCH_CUDA)
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
    return;
  }
#endif
  std::ofstream("/proc/self/clear_refs") << "5";
}

int64_t PeakMemoryBytes(const torch::Device& device) {
#if defined(SAEGRID_BENCH_CUDA)
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    // Index 0 is StatType::AGGREGATE (all pools), whose namespace moved between LibTorch versions.
    return stats.allocated_bytes[0].peak;
  }
#endif
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  }
  return -1;
}

saegrid::TrainConfig TrainerConfig(const Shape& s, const std::string& device, const std::string& kernels,
                                   int64_t steps, const std::string& out_dir) {
  saegrid::TrainConfig c;
  c.model.num_latents = s.n;
  c.model.k = s.k;
  c.model.compute_dtype = saegrid::ComputeDtype::kBFloat16;
  c.model.geometric_median_samples = 4096;
  // Dead latents early, so AuxK's selection and decode are part of the measured step.
  c.model.dead_tokens_threshold = 2 * s.batch;
  c.data.use_synthetic = true;
  c.data.synthetic.d = s.d;
  c.data.synthetic.num_features = 2 * s.d;
  c.data.synthetic.num_samples = 4 * s.batch;
  c.data.batch_size = s.batch;
  c.data.block_rows = std::min<int64_t>(1024, s.batch);
  c.data.eval_fraction = 0;
  c.training.total_tokens = steps * s.batch;
  c.checkpoint.output_dir = out_dir;
  c.checkpoint.resume = false;
  c.parallelism.device = device;
  c.parallelism.kernels = kernels;
  return c;
}

// The trainer's step on `kernels` ("auto" or "portable"), in this process.
json MeasureTrainerStep(const Shape& s, const std::string& device_name, const std::string& kernels, int repeats) {
  const std::string out_dir = std::filesystem::temp_directory_path() / ("device_step_bench." + std::to_string(getpid()));
  const int warmup = 3;
  auto trainer = saegrid::Trainer::Create(TrainerConfig(s, device_name, kernels, warmup + 2 * repeats + 2, out_dir));
  if (!trainer.ok()) return {{"error", std::string(trainer.status().message())}};
  const torch::Device device = (*trainer)->device();
  for (int i = 0; i < warmup; ++i) {
    auto m = (*trainer)->Step(false);
    if (!m.ok()) return {{"error", std::string(m.status().message())}};
  }
  Synchronize(device);
  ResetPeakMemory(device);
  std::vector<double> quiet_seconds;
  std::vector<int64_t> quiet_syncs, reporting_syncs;
  saegrid::StepProfile profile;
  double fvu = 0;
  int64_t dead = 0;
  for (int r = 0; r < repeats; ++r) {
    saegrid::HostSyncCounter counter;
    const auto start = Clock::now();
    auto m = (*trainer)->Step(false);
    Synchronize(device);  // the step's own read already waited; this only makes the timing exact
    if (!m.ok()) return {{"error", std::string(m.status().message())}};
    quiet_seconds.push_back(Seconds(start));
    quiet_syncs.push_back(counter.count());
  }
  for (int r = 0; r < 2; ++r) {
    saegrid::HostSyncCounter counter;
    auto m = (*trainer)->Step(true);
    if (!m.ok()) return {{"error", std::string(m.status().message())}};
    reporting_syncs.push_back(counter.count());
    profile = m->profile;
    fvu = m->fvu;
    dead = m->num_dead;
  }
  const int64_t peak = PeakMemoryBytes(device);
  std::error_code ec;
  std::filesystem::remove_all(out_dir, ec);
  const double median = Median(quiet_seconds);
  return {{"kernels", kernels},
          {"implementation", saegrid::kernels::ImplementationName(saegrid::kernels::ImplementationFor(device))},
          {"median_step_seconds", median},
          {"min_step_seconds", *std::min_element(quiet_seconds.begin(), quiet_seconds.end())},
          {"tokens_per_second", s.batch / median},
          {"host_syncs_per_quiet_step", *std::max_element(quiet_syncs.begin(), quiet_syncs.end())},
          {"host_syncs_per_reporting_step", *std::max_element(reporting_syncs.begin(), reporting_syncs.end())},
          {"peak_memory_bytes", peak},
          {"fvu", fvu},
          {"dead_latents", dead},
          // On a GPU these are launch times (the step does not wait per phase).
          {"phase_launch_seconds", {{"encoder", profile.encoder}, {"topk", profile.topk}, {"decode", profile.decode},
                                    {"backward", profile.backward}, {"optimizer", profile.optimizer}}}};
}

// The dense LibTorch autograd step (B x n pre-activations, float32, Adam as separate ops).
json MeasureDenseStep(const Shape& s, const std::string& device_name, int repeats) {
  saegrid::ParallelConfig parallel;
  parallel.device = device_name;
  auto device = saegrid::ResolveTrainingDevice(parallel, 1);
  if (!device.ok()) return {{"error", std::string(device.status().message())}};
  saegrid::ModelConfig config;
  config.k = s.k;
  config.num_latents = s.n;
  config = saegrid::ResolveModelConfig(config, s.d);
  torch::manual_seed(0);
  const auto x = torch::randn({s.batch, s.d}).to(*device);
  saegrid::SaeModel model(config, 0, 1, *device);
  model.Initialize(x.narrow(0, 0, std::min<int64_t>(s.batch, 4096)), 0);
  saegrid::Adam adam(model.params().All(), saegrid::OptimizerConfig{});
  auto step = [&] {
    for (auto& p : model.params().All()) p.mutable_grad().reset();
    auto out = model.TrainingForward(x, torch::Tensor(), saegrid::ComputePath::kDenseReference);
    out.loss.backward();
    model.ProjectDecoderGradient();
    adam.Step(1e-4);
    model.RenormalizeDecoder();
    Synchronize(*device);
  };
  try {
    step();
    ResetPeakMemory(*device);
    std::vector<double> seconds;
    for (int r = 0; r < repeats; ++r) {
      const auto start = Clock::now();
      step();
      seconds.push_back(Seconds(start));
    }
    return {{"median_step_seconds", Median(seconds)},
            {"tokens_per_second", s.batch / Median(seconds)},
            {"peak_memory_bytes", PeakMemoryBytes(*device)}};
  } catch (const std::exception& e) {
    return {{"error", std::string(saegrid::StatusFromException(e).message())}};
  }
}


std::vector<int64_t> ParseList(const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t value = 0;
    if (!absl::SimpleAtoi(part, &value) || value <= 0) {
      std::fprintf(stderr, "device_step_bench: --latents: \"%s\" is not a positive integer\n", std::string(part).c_str());
      std::exit(2);
    }
    out.push_back(value);
  }
  return out;
}

double Ratio(const json& a, const json& b) {
  if (!a.contains("median_step_seconds") || !b.contains("median_step_seconds")) return 0;
  return a["median_step_seconds"].get<double>() / b["median_step_seconds"].get<double>();
}

}  // namespace

int main(int argc, char** argv) {
  saegrid::ReexecIfBlasMisdetected(argv);
  using saegrid::FlagSpec;
  std::string device = "cuda", latents_text = "32768,131072", measure, kernels = "auto";
  int64_t batch = 8192, d = 768, k = 32, huge_latents = 1048576, repeats_flag = 10, threads_flag = 0, n_flag = 0;
  bool skip_dense = false, skip_huge = false;
  constexpr int64_t kBig = int64_t{1} << 40;
  saegrid::bench::ParseFlagsOrExit(argc, argv,
                                   {{"--device", FlagSpec::String(&device)},
                                    {"--batch", FlagSpec::Int(&batch, 1, kBig)},
                                    {"--d", FlagSpec::Int(&d, 1, kBig)},
                                    {"--k", FlagSpec::Int(&k, 1, kBig)},
                                    {"--latents", FlagSpec::String(&latents_text)},
                                    {"--huge-latents", FlagSpec::Int(&huge_latents, 1, kBig)},
                                    {"--repeats", FlagSpec::Int(&repeats_flag, 1, 1000)},
                                    {"--threads", FlagSpec::Int(&threads_flag, 0, 1 << 16)},
                                    {"--skip-dense", FlagSpec::Switch(&skip_dense)},
                                    {"--skip-huge", FlagSpec::Switch(&skip_huge)},
                                    // Internal: one measurement in a child process.
                                    {"--measure", FlagSpec::String(&measure)},
                                    {"--n", FlagSpec::Int(&n_flag, 0, kBig)},
                                    {"--kernels", FlagSpec::String(&kernels)}});
  const int repeats = static_cast<int>(repeats_flag);
  const int threads = saegrid::ConfigureThreads(static_cast<int>(threads_flag));

  if (!measure.empty()) {
    const Shape shape{batch, d, n_flag, k};
    json result = measure == "dense" ? MeasureDenseStep(shape, device, repeats)
                                     : MeasureTrainerStep(shape, device, kernels, repeats);
    std::printf("%s\n", result.dump().c_str());
    return 0;
  }

  const std::string common = " --device " + device + " --batch " + std::to_string(batch) + " --d " + std::to_string(d) +
                             " --k " + std::to_string(k) + " --threads " + std::to_string(threads);
  json runs = json::array();
  for (int64_t n : ParseList(latents_text)) {
    const Shape shape{batch, d, n, k};
    const std::string at = common + " --n " + std::to_string(n) + " --repeats " + std::to_string(repeats);
    json run = {{"latents", n}, {"h200_lower_bound_seconds", H200LowerBoundSeconds(shape)}};
    run["device_kernels"] = saegrid::bench::RunSelf("--measure trainer --kernels auto" + at);
    run["portable_kernels"] = saegrid::bench::RunSelf("--measure trainer --kernels portable" + at);
    if (!skip_dense) run["dense_autograd"] = saegrid::bench::RunSelf("--measure dense" + at);
    const double bound = H200LowerBoundSeconds(shape);
    for (const char* path : {"device_kernels", "portable_kernels", "dense_autograd"}) {
      if (run.contains(path) && run[path].contains("median_step_seconds")) {
        run[path]["ratio_to_h200_lower_bound"] = run[path]["median_step_seconds"].get<double>() / bound;
      }
    }
    if (run.contains("dense_autograd")) {
      run["device_kernels_speedup_over_dense"] = Ratio(run["dense_autograd"], run["device_kernels"]);
      run["portable_speedup_over_dense"] = Ratio(run["dense_autograd"], run["portable_kernels"]);
    }
    run["device_kernels_speedup_over_portable"] = Ratio(run["portable_kernels"], run["device_kernels"]);
    runs.push_back(run);
  }
  json out = {{"benchmark", "device_step_bench"},
              {"device", device},
              {"cuda_available", torch::cuda::is_available()},
              {"cuda_kernels_built", saegrid::kernels::CudaKernelsBuilt()},
              {"threads", threads},
              {"shape", {{"batch", batch}, {"d", d}, {"k", k}, {"compute_dtype", "bfloat16"}}},
              {"runs", runs},
              {"targets", {{"device_kernels_speedup_over_dense_at_131072", ">= 5"},
                           {"device_kernels_ratio_to_lower_bound_at_131072", "<= 2"},
                           {"host_syncs_per_quiet_step", "<= 2"}}}};
  if (!skip_huge) {
    const std::string at = common + " --n " + std::to_string(huge_latents) + " --repeats 3";
    out["huge"] = {{"latents", huge_latents},
                   {"h200_lower_bound_seconds", H200LowerBoundSeconds({batch, d, huge_latents, k})},
                   {"device_kernels", saegrid::bench::RunSelf("--measure trainer --kernels auto" + at)}};
  }
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}
