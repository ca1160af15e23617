// TopK against ReLU on the toy data (seed 004's generator: 512 features in 256 dimensions, about 5
// active) on two of Gao et al.'s evaluations: the 1-d probe loss of "true feature f is active" tasks
// (section 4.2) and activation shrinkage (section 5.1). Both SAEs are trained here with the
// defaults below, not tuned to these figures; the ReLU's L1 coefficient is one value from the range
// seed 004 sweeps. Prints JSON: each SAE's FVU, L0, MMCS, probe losses (latent, input-channel
// baseline, constant prior) and shrinkage, and the ReLU/TopK ratios measured in the same run.
//
//   toy_eval_bench [--tokens 3000000] [--latents 1024] [--k 8] [--l1 0.03] [--probe-rows 8192]
//                  [--probe-tasks 32] [--threads 0] [--scratch /tmp]
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <unistd.h>

#include "bench/bench_flags.h"
#include "engine/eval/suite.h"
#include "engine/runtime.h"
#include "engine/trainer.h"
#include "nlohmann/json.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Options {
  int64_t tokens = 3'000'000, latents = 1024, k = 8, threads = 0;
  int64_t probe_rows = 8192, probe_tasks = 32;
  double l1 = 0.03;
  std::string scratch = "/tmp";
};

json TrainAndEvaluate(const Options& o, saegrid::Architecture architecture, const fs::path& out) {
  using namespace saegrid;
  TrainConfig c;
  c.model.architecture = architecture;
  c.model.num_latents = o.latents;
  c.model.k = o.k;
  c.model.l1_coefficient = o.l1;
  if (architecture == Architecture::kReLU) c.model.decoder_init = DecoderInit::kOrthogonal;
  c.optimizer.lr = 2e-3;
  c.optimizer.warmup_steps = 20;
  c.optimizer.lr_decay = LrDecay::kLinear;
  c.data.use_synthetic = true;
  c.data.batch_size = 4096;
  c.training.total_tokens = o.tokens;
  c.checkpoint.output_dir = out.string();
  c.runtime.num_threads = static_cast<int>(o.threads);
  c.evaluation.run = {"probes", "shrinkage"};
  c.evaluation.probes.max_rows = o.probe_rows;
  c.evaluation.probes.max_tasks = o.probe_tasks;
  const auto start = std::chrono::steady_clock::now();
  auto trainer = Trainer::Create(c);
  if (!trainer.ok()) {
    std::fprintf(stderr, "toy_eval_bench: %s\n", std::string(trainer.status().message()).c_str());
    std::exit(1);
  }
  auto eval = (*trainer)->Train();
  if (!eval.ok() || !eval->evaluations || !eval->evaluations->error.empty()) {
    std::fprintf(stderr, "toy_eval_bench: %s\n",
                 !eval.ok() ? std::string(eval.status().message()).c_str() : eval->evaluations->error.c_str());
    std::exit(1);
  }
  const SuiteReport& r = *eval->evaluations;
  return {{"architecture", architecture == Architecture::kTopK ? "topk" : "relu"},
          {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()},
          {"fvu", eval->fvu},
          {"l0", eval->l0},
          {"mmcs", eval->mmcs},
          {"recovered_fraction", eval->recovered_fraction},
          {"probe_latent_loss", r.probes->mean_latent_loss},
          {"probe_channel_loss", r.probes->mean_channel_loss},
          {"probe_prior_loss", r.probes->mean_prior_loss},
          {"probe_tasks", r.probes->tasks.size()},
          {"shrinkage_ratio", r.shrinkage->mean_ratio},
          {"shrinkage_fvu_before", r.shrinkage->fvu_before},
          {"shrinkage_fvu_after", r.shrinkage->fvu_after}};
}

}  // namespace

int main(int argc, char** argv) {
  saegrid::ReexecIfBlasMisdetected(argv);
  Options o;
  saegrid::bench::ParseFlagsOrExit(argc, argv,
                                   {{"--tokens", saegrid::FlagSpec::Int(&o.tokens, 4096, int64_t{1} << 40)},
                                    {"--latents", saegrid::FlagSpec::Int(&o.latents, 8, 1 << 20)},
                                    {"--k", saegrid::FlagSpec::Int(&o.k, 1, 1 << 16)},
                                    {"--l1", saegrid::FlagSpec::Real(&o.l1, 0, 100)},
                                    {"--probe-rows", saegrid::FlagSpec::Int(&o.probe_rows, 16, int64_t{1} << 24)},
                                    {"--probe-tasks", saegrid::FlagSpec::Int(&o.probe_tasks, 1, 1 << 16)},
                                    {"--threads", saegrid::FlagSpec::Int(&o.threads, 0, 1024)},
                                    {"--scratch", saegrid::FlagSpec::String(&o.scratch)}});
  const fs::path dir = fs::path(o.scratch) / ("toy_eval_bench." + std::to_string(::getpid()));
  const json topk = TrainAndEvaluate(o, saegrid::Architecture::kTopK, dir / "topk");
  const json relu = TrainAndEvaluate(o, saegrid::Architecture::kReLU, dir / "relu");
  std::error_code ec;
  fs::remove_all(dir, ec);
  const json out = {
      {"benchmark", "toy_eval_bench"},
      {"tokens", o.tokens},
      {"latents", o.latents},
      {"k", o.k},
      {"l1_coefficient", o.l1},
      {"topk", topk},
      {"relu", relu},
      // The comparison of the run: > 1 means ReLU's figure is the larger.
      {"relu_vs_topk_probe_loss", relu["probe_latent_loss"].get<double>() / topk["probe_latent_loss"].get<double>()},
      {"relu_vs_topk_shrinkage_ratio", relu["shrinkage_ratio"].get<double>() / topk["shrinkage_ratio"].get<double>()},
  };
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}
