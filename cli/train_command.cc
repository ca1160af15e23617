#include "cli/train_command.h"

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "cli/progress_printer.h"
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
    "  --quiet              no progress line\n";

Trainer* g_trainer = nullptr;
volatile std::sig_atomic_t g_interrupted = 0;

void OnSignal(int) {
  g_interrupted = 1;
  if (g_trainer != nullptr) g_trainer->RequestStop();
}

}  // namespace

int RunTrainCommand(int argc, char** argv) {
  std::string config_path, output_dir;
  int64_t threads = -1, total_tokens = -1;
  bool no_resume = false, quiet = false;
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        absl::FPrintF(stderr, "saegrid train: %s needs a value\n%s", name, kUsage);
        return nullptr;
      }
      return argv[++i];
    };
    if (arg == "--config") {
      const char* v = value("--config");
      if (!v) return 2;
      config_path = v;
    } else if (arg == "--output-dir") {
      const char* v = value("--output-dir");
      if (!v) return 2;
      output_dir = v;
    } else if (arg == "--threads" || arg == "--total-tokens") {
      const char* v = value(arg.c_str());
      int64_t n;
      if (!v || !absl::SimpleAtoi(v, &n) || n < 0) {
        absl::FPrintF(stderr, "saegrid train: %s needs a non-negative integer\n", arg);
        return 2;
      }
      (arg == "--threads" ? threads : total_tokens) = n;
    } else if (arg == "--no-resume") {
      no_resume = true;
    } else if (arg == "--quiet") {
      quiet = true;
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
  auto trainer = Trainer::Create(*config);
  if (!trainer.ok()) {
    absl::FPrintF(stderr, "saegrid: %s\n", trainer.status().message());
    return absl::IsInvalidArgument(trainer.status()) || absl::IsNotFound(trainer.status()) ? 2 : 1;
  }
  const auto& mc = (*trainer)->config().model;
  if (!quiet) {
    absl::FPrintF(stdout, "saegrid train: %s SAE, d_in %d, %d latents, k %d, batch %d, %d steps, %d threads\n",
                  mc.architecture == Architecture::kTopK ? "TopK" : "ReLU", mc.d_in, mc.num_latents,
                  mc.k, config->data.batch_size, (*trainer)->total_steps(), (*trainer)->threads());
  }
  g_trainer = trainer->get();
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  ProgressPrinter progress(stdout, config->training.log_every_steps, quiet);
  auto result = (*trainer)->Train(&progress);
  g_trainer = nullptr;
  if (!result.ok()) {
    absl::FPrintF(stderr, "saegrid: training failed: %s\n", result.status().message());
    return 1;
  }
  absl::FPrintF(stdout, "evaluation:\n%s", FormatEvalTable(*result));
  std::fflush(stdout);
  return g_interrupted ? 130 : 0;
}

}  // namespace saegrid::cli
