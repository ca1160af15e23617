#include "cli/eval_command.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/durable_file.h"
#include "base/exit_code.h"
#include "base/flags.h"
#include "cli/plots.h"
#include "engine/activation/architecture_names.h"
#include "engine/checkpoint.h"
#include "engine/data/activation_source.h"
#include "engine/device.h"
#include "engine/eval/suite.h"
#include "engine/evaluation.h"
#include "engine/runtime.h"
#include "spec/train_config.h"

namespace saegrid::cli {
namespace {

namespace fs = std::filesystem;

constexpr char kUsage[] =
    "usage: saegrid eval --checkpoint DIR --config FILE [options]\n"
    "Runs the papers' evaluations on a checkpoint (a step directory, or an output directory's newest\n"
    "step) with the data and evaluation sections of the job spec that trained it, and writes\n"
    "evaluations.json, top_examples.json (top_examples) and PNG figures.\n"
    "evaluations: downstream_loss, ablation_sparsity, token_stats, top_examples, n2g (need\n"
    "data.language_model); probes, shrinkage, sae_comparison.\n"
    "options:\n"
    "  --only NAME[,NAME...]   default: the config's evaluation.run, else every one the config can run\n"
    "  --output-dir DIR        default <output dir>/evaluations/<step directory>\n"
    "  --compare DIR           more checkpoints (steps or output directories) for the L0-FVU figure;\n"
    "                          repeatable (a sweep's other jobs)\n"
    "  --no-plots              no PNG figures\n"
    "  --threads N             default: every core\n"
    "  --quiet                 no progress lines\n";

int Fail(TrainExitCode code, const std::string& message) {
  absl::FPrintF(stderr, "saegrid eval: %s\n", message);
  return ToInt(code);
}

absl::StatusOr<nlohmann::json> ReadJsonFile(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(path.string());
  try {
    auto j = nlohmann::json::parse(in);
    if (!j.is_object()) return absl::DataLossError(absl::StrCat(path.string(), ": not a JSON object"));
    return j;
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(path.string(), ": ", e.what()));
  }
}

// The evaluations the config can run when none is named.
std::vector<std::string> DefaultEvaluations(const TrainConfig& c) {
  if (!c.evaluation.run.empty()) return c.evaluation.run;
  std::vector<std::string> names;
  for (const auto& name : EvaluationNames()) {
    if (MissingForEvaluation(name, c).empty()) names.push_back(name);
  }
  return names;
}

// The checkpoints on the L0-FVU figure: every step of `dir`'s output directory with an
// evaluation.json (the steps of one job), or the one step `dir` names.
void CollectL0Fvu(const fs::path& dir, std::vector<L0FvuPoint>* points) {
  std::vector<fs::path> steps;
  std::error_code ec;
  if (fs::exists(dir / "trainer_state.json", ec)) {
    steps.push_back(dir);
  } else {
    for (const auto& e : fs::directory_iterator(dir / "checkpoints", ec)) {
      const std::string name = e.path().filename().string();
      if (e.is_directory() && absl::StartsWith(name, "step_") && !absl::EndsWith(name, ".tmp")) steps.push_back(e.path());
    }
    std::sort(steps.begin(), steps.end());
  }
  for (const auto& step : steps) {
    auto eval = ReadJsonFile(step / "evaluation.json");
    auto model = ReadCheckpointModel(step.string());
    if (!eval.ok() || !model.ok() || !(*eval)["l0"].is_number() || !(*eval)["fvu"].is_number()) continue;
    // A diverged checkpoint (NaN FVU) has no place on the plane; the figure refuses non-finite values.
    if (!std::isfinite((*eval)["l0"].get<double>()) || !std::isfinite((*eval)["fvu"].get<double>())) continue;
    const std::string group = absl::StrCat(SparsityLabel(*model), " n=", model->num_latents);
    points->push_back({absl::StrCat(group, " ", step.filename().string()), (*eval)["l0"].get<double>(),
                       (*eval)["fvu"].get<double>(), group});
  }
}

}  // namespace

int RunEvalCommand(int argc, char** argv) {
  std::string checkpoint, config_path, only, output_dir;
  std::vector<std::string> compare;
  int64_t threads = 0;
  bool quiet = false, help = false, no_plots = false;
  std::vector<std::string> positional;
  auto parsed = ParseFlags(argc, argv,
                           {{"--checkpoint", FlagSpec::String(&checkpoint)},
                            {"--config", FlagSpec::String(&config_path)},
                            {"--only", FlagSpec::String(&only)},
                            {"--output-dir", FlagSpec::String(&output_dir)},
                            {"--compare", FlagSpec::List(&compare)},
                            {"--no-plots", FlagSpec::Switch(&no_plots)},
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
    absl::FPrintF(stderr, "saegrid eval: %s\n%s", message, kUsage);
    return ToInt(TrainExitCode::kInvalidConfig);
  };
  if (!parsed.ok()) return usage(std::string(parsed.message()));
  if (!positional.empty()) return usage(absl::StrCat("unexpected argument '", positional[0], "'"));
  if (checkpoint.empty()) return usage("--checkpoint is required");
  if (config_path.empty()) return usage("--config is required");

  auto config = LoadTrainConfigFile(config_path);
  if (!config.ok()) return Fail(TrainExitCode::kInvalidConfig, std::string(config.status().message()));
  std::vector<std::string> names =
      only.empty() ? DefaultEvaluations(*config) : absl::StrSplit(only, ',', absl::SkipEmpty());
  for (const auto& name : names) {
    if (!IsEvaluationName(name)) {
      return usage(absl::StrCat("--only: unknown evaluation '", name, "' (", absl::StrJoin(EvaluationNames(), ", "), ")"));
    }
    if (const std::string missing = MissingForEvaluation(name, *config); !missing.empty()) {
      return usage(absl::StrCat("--only: ", name, " needs ", missing, " in ", config_path));
    }
  }
  auto sae = LoadPublishedSae(checkpoint);
  if (!sae.ok()) return Fail(TrainExitCode::kInvalidConfig, absl::StrCat("--checkpoint: ", sae.status().message()));
  const fs::path step_dir = sae->step_dir;
  if (output_dir.empty()) {
    output_dir = (step_dir.parent_path().parent_path() / "evaluations" / step_dir.filename()).string();
  }
  std::error_code ec;
  fs::create_directories(output_dir, ec);
  if (ec) return Fail(TrainExitCode::kInvalidConfig, absl::StrCat("--output-dir ", output_dir, ": ", ec.message()));

  const int used_threads = ConfigureThreads(static_cast<int>(threads > 0 ? threads : config->runtime.num_threads));
  auto device = ResolveTrainingDevice(config->parallelism, 1);
  if (!device.ok()) return Fail(TrainExitCode::kInvalidConfig, std::string(device.status().message()));
  SaeParameters params{sae->params.w_enc.to(*device), sae->params.b_enc.to(*device), sae->params.w_dec.to(*device),
                       sae->params.b_pre.to(*device)};
  if (!quiet) {
    absl::FPrintF(stdout, "saegrid eval: %s (step %d, %d latents, d %d), %d threads: %s\n", step_dir.string(), sae->step,
                  sae->model.num_latents, sae->model.d_in, used_threads, absl::StrJoin(names, ", "));
    std::fflush(stdout);
  }
  SuiteInputs inputs;
  inputs.config = &*config;
  inputs.model = sae->model;
  inputs.params = &params;
  inputs.device = *device;
  const auto start = std::chrono::steady_clock::now();
  std::string current;
  inputs.progress = [&](const std::string& name, double fraction) {
    if (quiet) return;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (fraction == 0) {
      current = name;
      absl::FPrintF(stdout, "eval: %-18s started  (%.1f s)\n", name, seconds);
    } else if (fraction >= 1) {
      absl::FPrintF(stdout, "eval: %-18s done     (%.1f s)\n", name, seconds);
    } else {
      absl::FPrintF(stdout, "eval: %-18s %3.0f%%     (%.1f s)\n", name, 100 * fraction, seconds);
    }
    std::fflush(stdout);
  };
  absl::StatusOr<SuiteReport> report = absl::InternalError("not run");
  try {
    report = RunEvaluationSuite(inputs, names);
  } catch (const std::exception& e) {
    report = StatusFromException(e);
  }
  if (!report.ok()) {
    return Fail(report.status().code() == absl::StatusCode::kInvalidArgument ||
                        report.status().code() == absl::StatusCode::kNotFound
                    ? TrainExitCode::kInvalidConfig
                    : TrainExitCode::kFailed,
                std::string(report.status().message()));
  }
  nlohmann::json out = {{"checkpoint", step_dir.string()},
                        {"step", sae->step},
                        {"tokens", sae->tokens},
                        {"evaluations", SuiteReportToJson(*report)}};
  auto write = [&](const std::string& name, const nlohmann::json& j) -> absl::Status {
    return WriteFileDurably((fs::path(output_dir) / name).string(), j.dump(2) + "\n");
  };
  absl::Status written = write("evaluations.json", out);
  if (written.ok() && report->top_examples) written = write("top_examples.json", report->top_examples->file);
  if (!written.ok()) return Fail(TrainExitCode::kFailed, std::string(written.message()));
  if (!quiet) absl::FPrintF(stdout, "%s", FormatSuiteTable(*report));

  std::vector<std::string> figures;
  if (!no_plots) {
    std::vector<std::string> plot_errors;
    auto draw = [&](const Figure& figure, const std::string& name) {
      const std::string path = (fs::path(output_dir) / name).string();
      const absl::Status s = WritePng(figure, path);
      if (s.ok()) figures.push_back(path);
      else plot_errors.push_back(absl::StrCat(name, ": ", s.message()));
    };
    // A checkpoint's JSON that is not what saegrid writes (edited by hand, another version)
    // costs a figure, not the evaluation.
    try {
      // The density histogram of the checkpoint's own evaluation.
      if (auto eval = ReadJsonFile(step_dir / "evaluation.json"); eval.ok() && eval->contains("density_histogram")) {
        const auto& h = (*eval)["density_histogram"];
        draw(DensityHistogramFigure(h["log10_low"].get<double>(), h["log10_step"].get<double>(),
                                    h["counts"].get<std::vector<int64_t>>(), h["never_fired"].get<int64_t>()),
             "density_histogram.png");
      }
      // This checkpoint, and the job's other evaluated steps when it sits in an output directory.
      std::vector<L0FvuPoint> points;
      CollectL0Fvu(step_dir.parent_path().filename() == "checkpoints" ? step_dir.parent_path().parent_path() : step_dir,
                   &points);
      for (const auto& dir : compare) CollectL0Fvu(dir, &points);
      if (!points.empty()) draw(L0FvuFigure(points), "l0_fvu.png");
      // Loss recovered over training: the job's checkpoints evaluated during training, then this one.
      std::vector<double> tokens, recovered;
      std::error_code dir_ec;
      std::vector<fs::path> steps;
      for (const auto& e : fs::directory_iterator(step_dir.parent_path(), dir_ec)) {
        const std::string name = e.path().filename().string();
        if (e.is_directory() && absl::StartsWith(name, "step_") && !absl::EndsWith(name, ".tmp")) steps.push_back(e.path());
      }
      std::sort(steps.begin(), steps.end());
      for (const auto& step : steps) {
        if (step == step_dir) continue;
        auto eval = ReadJsonFile(step / "evaluation.json");
        auto state = ReadJsonFile(step / "trainer_state.json");
        if (!eval.ok() || !state.ok()) continue;
        const auto lr = eval->value("/evaluations/downstream_loss/loss_recovered"_json_pointer, nlohmann::json());
        if (lr.is_number()) {
          tokens.push_back((*state)["tokens"].get<double>());
          recovered.push_back(lr.get<double>());
        }
      }
      if (report->downstream_loss && std::isfinite(report->downstream_loss->loss_recovered)) {
        tokens.push_back(static_cast<double>(sae->tokens));
        recovered.push_back(report->downstream_loss->loss_recovered);
      }
      if (!tokens.empty()) {
        draw(LossRecoveredFigure(tokens, recovered), "loss_recovered.png");
      } else if (!quiet) {
        absl::FPrintF(stdout, "no loss-recovered figure: no checkpoint of this job has downstream_loss\n");
      }
    } catch (const nlohmann::json::exception& e) {
      plot_errors.push_back(absl::StrCat("skipped: a checkpoint's JSON has an unexpected shape: ", e.what()));
    }
    for (const auto& e : plot_errors) absl::FPrintF(stderr, "saegrid eval: figure %s\n", e);
  }
  if (!quiet) {
    absl::FPrintF(stdout, "wrote %s/evaluations.json%s%s\n", output_dir,
                  report->top_examples ? ", top_examples.json" : "",
                  figures.empty() ? "" : absl::StrCat(" and ", figures.size(), " figures"));
  }
  for (const auto& [name, message] : report->failed) absl::FPrintF(stderr, "saegrid eval: %s failed: %s\n", name, message);
  return report->failed.empty() ? 0 : ToInt(TrainExitCode::kFailed);
}

}  // namespace saegrid::cli
