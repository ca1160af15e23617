#include "cli/train_command.h"

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/local_launcher.h"
#include "cli/metrics_log.h"
#include "cli/progress_printer.h"
#include "engine/distributed/gang.h"
#include "engine/runtime.h"
#include "engine/trainer.h"
#include "spec/job_spec_loader.h"
#include "spec/train_config.h"

namespace saegrid::cli {
namespace {

constexpr char kUsage[] =
    "usage: saegrid train --config FILE [options]\n"
    "  --config FILE        job specification (YAML or JSON; see examples/)\n"
    "  --output-dir DIR     overrides checkpoint.output_dir\n"
    "  --threads N          overrides resources.num_threads (0: all cores)\n"
    "  --total-tokens N     overrides training.total_tokens\n"
    "  --no-resume          start fresh even if output-dir holds a checkpoint\n"
    "  --quiet              no progress line\n"
    "  --metrics-jsonl FILE one JSON line per step and for the evaluation (rank 0)\n"
    "parallel training (parallelism.shards x parallelism.replicas ranks):\n"
    "  --local-ranks N      start N ranks on this machine (the default when the config asks for\n"
    "                       more than one rank); each gets cores / N threads\n"
    "  --rank R --world-size W --rendezvous HOST:PORT\n"
    "                       run one rank; rank 0 serves the rendezvous store at HOST:PORT\n"
    "  --attempt ID         rendezvous namespace of this (re)start of the gang (default 0)\n"
    "  environment: SAEGRID_BIND_HOST (address this rank accepts peers on; default: 127.0.0.1\n"
    "  for a loopback rendezvous, else this host's name), SAEGRID_LOCAL_RANKS (ranks sharing\n"
    "  this machine's cores, for the default thread count)\n"
    "exit codes: 0 done, 1 failed, 2 bad usage or config, 3 lost a peer rank,\n"
    "  4 the checkpoint to resume from could not be restored, 130 stopped by a signal\n";

Trainer* g_trainer = nullptr;
volatile std::sig_atomic_t g_interrupted = 0;

void OnSignal(int) {
  g_interrupted = 1;
  if (g_trainer != nullptr) g_trainer->RequestStop();
}


bool IsLoopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1";
}

std::string BindHost(const std::string& rendezvous_host) {
  if (const char* env = std::getenv("SAEGRID_BIND_HOST"); env != nullptr && *env != '\0') return env;
  if (IsLoopback(rendezvous_host)) return "127.0.0.1";
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) == 0 && name[0] != '\0') return name;
  return "127.0.0.1";
}

// Exit now: after a collective failed, LibTorch's process-group destructors may wait on peers
// that are gone, and the exit must not.
[[noreturn]] void ExitNow(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(code);
}

int StatusExitCode(const absl::Status& status) {
  if (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) return 3;
  if (absl::IsInvalidArgument(status) || absl::IsNotFound(status)) return 2;
  return 1;
}

}  // namespace

int RunTrainCommand(int argc, char** argv) {
  std::string config_path, output_dir, rendezvous, attempt = "0", metrics_path;
  int64_t threads = -1, total_tokens = -1, rank = -1, world_size = -1, local_ranks = -1;
  bool no_resume = false, quiet = false, gather_checkpoints = false, metrics_all_ranks = false;
  std::vector<std::string> passthrough;  // what --local-ranks hands on to every rank
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        absl::FPrintF(stderr, "saegrid train: %s needs a value\n%s", name, kUsage);
        return nullptr;
      }
      return argv[++i];
    };
    if (arg == "--config" || arg == "--output-dir" || arg == "--rendezvous" || arg == "--attempt" ||
        arg == "--metrics-jsonl") {
      const char* v = value(arg.c_str());
      if (!v) return 2;
      (arg == "--config" ? config_path : arg == "--output-dir" ? output_dir
                                       : arg == "--rendezvous" ? rendezvous
                                       : arg == "--attempt"    ? attempt
                                                               : metrics_path) = v;
      if (arg != "--rendezvous") passthrough.insert(passthrough.end(), {arg, v});
    } else if (arg == "--threads" || arg == "--total-tokens" || arg == "--rank" ||
               arg == "--world-size" || arg == "--local-ranks") {
      const char* v = value(arg.c_str());
      int64_t n;
      if (!v || !absl::SimpleAtoi(v, &n) || n < 0) {
        absl::FPrintF(stderr, "saegrid train: %s needs a non-negative integer\n", arg);
        return 2;
      }
      (arg == "--threads" ? threads : arg == "--total-tokens" ? total_tokens
                                    : arg == "--rank"         ? rank
                                    : arg == "--world-size"   ? world_size
                                                              : local_ranks) = n;
      if (arg == "--threads" || arg == "--total-tokens") passthrough.insert(passthrough.end(), {arg, v});
    } else if (arg == "--no-resume" || arg == "--quiet" || arg == "--gather-checkpoints" ||
               arg == "--metrics-all-ranks") {
      (arg == "--no-resume"            ? no_resume
       : arg == "--quiet"              ? quiet
       : arg == "--gather-checkpoints" ? gather_checkpoints
                                       : metrics_all_ranks) = true;
      passthrough.push_back(arg);
    } else if (arg == "-h" || arg == "--help") {
      absl::FPrintF(stdout, "%s", kUsage);
      return 0;
    } else {
      absl::FPrintF(stderr, "saegrid train: unknown argument '%s'\n%s", arg, kUsage);
      return 2;
    }
  }
  if (config_path.empty()) {
    absl::FPrintF(stderr, "saegrid train: --config is required\n%s", kUsage);
    return 2;
  }
  const bool one_rank = rank >= 0 || world_size >= 0 || !rendezvous.empty();
  if (one_rank && (rank < 0 || world_size < 1 || rendezvous.empty())) {
    absl::FPrintF(stderr, "saegrid train: --rank, --world-size and --rendezvous go together\n");
    return 2;
  }
  if (one_rank && local_ranks >= 0) {
    absl::FPrintF(stderr, "saegrid train: --local-ranks starts its own ranks; drop --rank/--world-size/--rendezvous\n");
    return 2;
  }
  auto spec = LoadJobSpecFile(config_path);
  if (!spec.ok()) {
    absl::FPrintF(stderr, "saegrid: invalid config: %s\n", spec.status().message());
    return 2;
  }
  if (total_tokens >= 0) spec->mutable_training()->set_total_tokens(total_tokens);
  if (threads >= 0) spec->mutable_resources()->set_num_threads(threads);
  if (!output_dir.empty()) spec->mutable_checkpoint()->set_output_dir(output_dir);
  if (no_resume) spec->mutable_checkpoint()->set_resume(false);
  auto config = ToTrainConfig(*spec);
  if (!config.ok()) {
    absl::FPrintF(stderr, "saegrid: invalid config %s: %s\n", config_path, config.status().message());
    return 2;
  }
  config->checkpoint.gather_to_leader = gather_checkpoints;
  if (config->model.compute_dtype == ComputeDtype::kBFloat16 && !CpuHasNativeBFloat16()) {
    absl::FPrintF(stderr, "saegrid: warning: model.compute_dtype is bfloat16 but this CPU has neither "
                          "AMX-BF16 nor AVX512-BF16; the encoder matmul is emulated and slower than float32\n");
  }
  const int64_t gang_size = config->parallelism.shards * config->parallelism.replicas;
  if (!one_rank && (local_ranks > 0 || gang_size > 1)) {
    if (local_ranks > 0 && local_ranks != gang_size) {
      absl::FPrintF(stderr, "saegrid: --local-ranks %d but parallelism.shards x replicas = %d x %d = %d\n",
                    local_ranks, config->parallelism.shards, config->parallelism.replicas, gang_size);
      return 2;
    }
    if (gang_size > 1) {
      return RunLocalRanks(static_cast<int>(gang_size), passthrough, threads >= 0,
                           config->parallelism.timeout_seconds + 5);
    }
  }
  if (one_rank && threads < 0 && config->runtime.num_threads == 0) {
    // Ranks that share this machine split its cores.
    int64_t sharing = 1;
    if (const char* env = std::getenv("SAEGRID_LOCAL_RANKS"); env != nullptr) {
      if (!absl::SimpleAtoi(env, &sharing) || sharing < 1) sharing = 1;
    }
    const int64_t cores = AvailableCores();
    config->runtime.num_threads = static_cast<int>(std::max<int64_t>(1, cores / sharing));
  }

  std::unique_ptr<Gang> gang;
  const std::string who = one_rank ? absl::StrCat("saegrid[rank ", rank, "]") : "saegrid";
  if (one_rank) {
    RendezvousOptions options;
    auto st = ParseHostPort(rendezvous, "--rendezvous", &options.host, &options.port);
    if (!st.ok()) {
      absl::FPrintF(stderr, "saegrid train: %s\n", st.message());
      return 2;
    }
    options.rank = static_cast<int>(rank);
    options.world_size = static_cast<int>(world_size);
    options.attempt = attempt;
    options.timeout = std::chrono::milliseconds(static_cast<int64_t>(config->parallelism.timeout_seconds * 1000));
    auto joined = JoinGang(config->parallelism, options, BindHost(options.host));
    if (!joined.ok()) {
      absl::FPrintF(stderr, "%s: %s\n", who, joined.status().message());
      ExitNow(StatusExitCode(joined.status()));
    }
    gang = *std::move(joined);
  }
  const bool leader = rank <= 0;
  auto trainer = Trainer::Create(*config, std::move(gang));
  if (!trainer.ok()) {
    absl::FPrintF(stderr, "%s: %s\n", who, trainer.status().message());
    const int code = absl::StartsWith(trainer.status().message(), kRestoreFailedPrefix)
                         ? 4
                         : StatusExitCode(trainer.status());
    if (one_rank) ExitNow(code);
    return code;
  }
  const auto& mc = (*trainer)->config().model;
  if (!quiet && leader) {
    const auto& layout = (*trainer)->layout();
    absl::FPrintF(stdout, "saegrid train: %s SAE, d_in %d, %d latents, k %d, batch %d, %d steps, %d threads%s\n",
                  mc.architecture == Architecture::kTopK ? "TopK" : "ReLU", mc.d_in, mc.num_latents,
                  mc.k, config->data.batch_size, (*trainer)->total_steps(), (*trainer)->threads(),
                  layout.world_size() > 1
                      ? absl::StrFormat(" per rank; %d shards x %d replicas, %d candidates per shard",
                                        layout.shards, layout.replicas, (*trainer)->candidates_per_shard())
                      : "");
  }
  g_trainer = trainer->get();
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  ProgressPrinter progress(stdout, config->training.log_every_steps, quiet || !leader);
  ObserverList observers;
  observers.Add(&progress);
  std::unique_ptr<MetricsLog> metrics;
  if (!metrics_path.empty() && (leader || (metrics_all_ranks && one_rank))) {
    metrics = std::make_unique<MetricsLog>(metrics_path);
    if (!metrics->ok()) {
      absl::FPrintF(stderr, "saegrid: cannot write --metrics-jsonl %s\n", metrics_path);
      if (one_rank) ExitNow(2);
      return 2;
    }
    observers.Add(metrics.get());
  }
  auto result = (*trainer)->Train(&observers);
  g_trainer = nullptr;
  if (!result.ok()) {
    absl::FPrintF(stderr, "%s: training failed: %s\n", who, result.status().message());
    if (one_rank) ExitNow(StatusExitCode(result.status()) == 2 ? 1 : StatusExitCode(result.status()));
    return 1;
  }
  if (leader) absl::FPrintF(stdout, "evaluation:\n%s", FormatEvalTable(*result));
  std::fflush(stdout);
  // A stop that another rank asked for (the gang agrees on stops) ends this rank early too.
  const bool stopped_early = (*trainer)->step() < (*trainer)->total_steps();
  const int code = g_interrupted || stopped_early ? 130 : 0;
  metrics.reset();
  if (one_rank) ExitNow(code);
  return code;
}

}  // namespace saegrid::cli
