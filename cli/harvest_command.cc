#include "cli/harvest_command.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/exit_code.h"
#include "base/flags.h"
#include "engine/data/language_model_source.h"
#include "engine/device.h"
#include "engine/lm/harvest.h"
#include "engine/runtime.h"
#include "spec/train_config.h"

namespace saegrid::cli {
namespace {

constexpr char kUsage[] =
    "usage: saegrid harvest --config FILE [options]\n"
    "Runs the language model of the config's data.language_model over its token file and writes the\n"
    "hookpoint's activations as shards with a manifest.json (train on them with data.path:\n"
    "DIR/manifest.json). A harvest that was stopped resumes without redoing finished shards.\n"
    "options:\n"
    "  --output-dir DIR            default <checkpoint.output_dir>/activations/<hookpoint>\n"
    "  --format npy|safetensors    default npy (activations .npy with .tokens.npy beside them)\n"
    "  --dtype float32|float16|bfloat16  default float32 (bfloat16: safetensors only)\n"
    "  --sequences-per-shard N     default 256\n"
    "  --max-sequences N           default: the whole token file\n"
    "  --threads N                 default: every core\n"
    "  --quiet                     no progress lines\n";

int Fail(TrainExitCode code, const std::string& message) {
  absl::FPrintF(stderr, "saegrid harvest: %s\n", message);
  return ToInt(code);
}

}  // namespace

int RunHarvestCommand(int argc, char** argv) {
  std::string config_path, output_dir, format = "npy", dtype = "float32";
  int64_t per_shard = 256, max_sequences = 0, threads = 0;
  bool quiet = false, help = false;
  std::vector<std::string> positional;
  auto parsed = ParseFlags(argc, argv,
                           {{"--config", FlagSpec::String(&config_path)},
                            {"--output-dir", FlagSpec::String(&output_dir)},
                            {"--format", FlagSpec::String(&format)},
                            {"--dtype", FlagSpec::String(&dtype)},
                            {"--sequences-per-shard", FlagSpec::Int(&per_shard, 1, int64_t{1} << 30)},
                            {"--max-sequences", FlagSpec::Int(&max_sequences, 0, int64_t{1} << 40)},
                            {"--threads", FlagSpec::Int(&threads, 0, 1 << 16)},
                            {"--quiet", FlagSpec::Switch(&quiet)},
                            {"--help", FlagSpec::Switch(&help)},
                            {"-h", FlagSpec::Switch(&help)}},
                           &positional);
  if (help) {
    absl::FPrintF(stdout, "%s", kUsage);
    return 0;
  }
  auto usage = [&](const std::string& message) {
    absl::FPrintF(stderr, "saegrid harvest: %s\n%s", message, kUsage);
    return ToInt(TrainExitCode::kInvalidConfig);
  };
  if (!parsed.ok()) return usage(std::string(parsed.message()));
  if (!positional.empty()) return usage(absl::StrCat("unexpected argument '", positional[0], "'"));
  if (config_path.empty()) return usage("--config is required");
  HarvestOptions options;
  if (format == "npy") options.format = HarvestOptions::Format::kNpy;
  else if (format == "safetensors") options.format = HarvestOptions::Format::kSafetensors;
  else return usage(absl::StrCat("--format must be npy or safetensors, got '", format, "'"));
  if (dtype == "float32") options.dtype = torch::kFloat;
  else if (dtype == "float16") options.dtype = torch::kHalf;
  else if (dtype == "bfloat16") options.dtype = torch::kBFloat16;
  else return usage(absl::StrCat("--dtype must be float32, float16 or bfloat16, got '", dtype, "'"));
  if (options.dtype == torch::kBFloat16 && options.format == HarvestOptions::Format::kNpy) {
    return usage("--dtype bfloat16 needs --format safetensors (.npy has no bfloat16)");
  }

  auto config = LoadTrainConfigFile(config_path);
  if (!config.ok()) return Fail(TrainExitCode::kInvalidConfig, std::string(config.status().message()));
  const LanguageModelDataConfig& lm = config->data.language_model;
  if (!config->data.uses_language_model()) {
    return Fail(TrainExitCode::kInvalidConfig,
                absl::StrCat("invalid config ", config_path, ": data.language_model: harvest needs a model and tokens"));
  }
  const int used_threads = ConfigureThreads(static_cast<int>(threads > 0 ? threads : config->runtime.num_threads));
  auto device = ResolveTrainingDevice(config->parallelism, 1);
  if (!device.ok()) return Fail(TrainExitCode::kInvalidConfig, std::string(device.status().message()));
  auto opened = OpenLanguageModelData(lm, *device);
  if (!opened.ok()) return Fail(TrainExitCode::kInvalidConfig, std::string(opened.status().message()));

  options.output_dir = !output_dir.empty()
                           ? output_dir
                           : (std::filesystem::path(config->checkpoint.output_dir) / "activations" / lm.hookpoint).string();
  options.hook = opened->hook;
  options.device = *device;
  options.model_description = lm.model_path;
  options.sequences_per_shard = per_shard;
  options.sequences_per_batch = lm.sequences_per_forward;
  options.max_sequences = max_sequences;
  options.excluded_ids = lm.exclude_token_ids;
  if (!quiet) {
    absl::FPrintF(stdout, "saegrid harvest: %s (%s, %d layers, d %d) at %s over %s: %d sequences of %d tokens, %d threads\n",
                  lm.model_path, opened->model->model_type(), opened->model->num_layers(), opened->model->d_model(),
                  lm.hookpoint, lm.tokens_path,
                  max_sequences > 0 ? std::min(max_sequences, opened->tokens->num_sequences())
                                    : opened->tokens->num_sequences(),
                  lm.context_length, used_threads);
    std::fflush(stdout);
  }
  const auto start = std::chrono::steady_clock::now();
  // Sequences of shards found from an earlier run: not part of this run's rate.
  int64_t skipped_sequences = 0, last_skipped = 0, last_sequences = 0;
  auto on_shard = [&](const HarvestProgress& p) {
    if (p.shards_skipped > last_skipped) skipped_sequences += p.sequences_done - last_sequences;
    last_skipped = p.shards_skipped;
    last_sequences = p.sequences_done;
    if (quiet) return;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double computed = static_cast<double>(p.sequences_done - skipped_sequences) * lm.context_length;
    absl::FPrintF(stdout, "harvest: shard %d/%d, %d sequences, %d rows written%s, %.0f tokens/s\n", p.shards_done,
                  p.shards_total, p.sequences_done, p.rows_written,
                  p.shards_skipped > 0 ? absl::StrFormat(" (%d shards found from an earlier run)", p.shards_skipped) : "",
                  seconds > 0 ? computed / seconds : 0.0);
    std::fflush(stdout);
  };
  absl::StatusOr<HarvestProgress> done = absl::InternalError("not run");
  try {
    done = HarvestActivations(*opened->model, *opened->tokens, options, on_shard);
  } catch (const std::exception& e) {
    done = StatusFromException(e);
  }
  if (!done.ok()) {
    return Fail(done.status().code() == absl::StatusCode::kInvalidArgument ||
                        done.status().code() == absl::StatusCode::kFailedPrecondition
                    ? TrainExitCode::kInvalidConfig
                    : TrainExitCode::kFailed,
                std::string(done.status().message()));
  }
  if (!quiet) {
    absl::FPrintF(stdout, "harvested %d shards into %s; train on them with data.path: %s/manifest.json\n",
                  done->shards_total, options.output_dir, options.output_dir);
  }
  return 0;
}

}  // namespace saegrid::cli
