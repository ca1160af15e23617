#include "cli/train_command.h"

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/error_kind.h"
#include "base/exit_code.h"
#include "base/flags.h"
#include "cli/local_launcher.h"
#include "cli/metrics_log.h"
#include "cli/progress_printer.h"
#include "engine/activation/architecture_names.h"
#include "engine/distributed/gang.h"
#include "engine/runtime.h"
#include "engine/trainer.h"
#include "google/protobuf/util/json_util.h"
#include "spec/job_spec_loader.h"
#include "spec/train_config.h"

namespace saegrid::cli {
namespace {

constexpr char kUsage[] =
    "usage: saegrid train --config FILE [options]    (the program is saegrid-train)\n"
    "  --config FILE          job specification (YAML or JSON; see examples/)\n"
    "  --job-proto-json FILE  the job as a saegrid.v1.JobSpec in proto JSON, unknown fields refused\n"
    "                         (what the worker writes); instead of --config\n"
    "  --output-dir DIR       overrides checkpoint.output_dir\n"
    "  --threads N            overrides resources.num_threads (0: all cores)\n"
    "  --total-tokens N       overrides training.total_tokens\n"
    "  --no-resume            start fresh even if output-dir holds a checkpoint\n"
    "  --quiet                no progress line\n"
    "  --metrics-jsonl FILE   one saegrid.v1.RankEvent per line in proto JSON (rank 0): every step,\n"
    "                         checkpoint and the evaluation, and a RankFailure when it fails\n"
    "parallel training (parallelism.shards x parallelism.replicas ranks):\n"
    "  --local-ranks N        start N ranks on this machine (the default when the config asks for\n"
    "                         more than one rank); each gets cores / N threads\n"
    "  --rank R --world-size W --rendezvous HOST:PORT\n"
    "                         run one rank; rank 0 serves the rendezvous store at HOST:PORT\n"
    "  --attempt ID           rendezvous namespace of this (re)start of the gang (default 0)\n"
    "  --gather-checkpoints   rank 0 receives every shard's state and writes whole checkpoints\n"
    "  --metrics-all-ranks    every rank writes its own --metrics-jsonl file, not only rank 0\n"
    "  environment: SAEGRID_BIND_HOST (address this rank accepts peers on; default: 127.0.0.1\n"
    "  for a loopback rendezvous, else this host's name), SAEGRID_LOCAL_RANKS (ranks sharing\n"
    "  this machine's cores, for the default thread count), SAEGRID_VERBOSE=1 (runtime notices)\n"
    "exit codes: 0 done, 1 failed, 2 bad usage or config, 3 lost a peer rank,\n"
    "  4 the checkpoint to resume from could not be restored, 5 out of memory, 130 stopped\n";

struct TrainOptions {
  std::string config_path, job_proto_json, output_dir, rendezvous, attempt = "0", metrics_path;
  int64_t threads = -1, total_tokens = -1, rank = -1, world_size = -1, local_ranks = -1;
  bool no_resume = false, quiet = false, gather_checkpoints = false, metrics_all_ranks = false, help = false;

  bool one_rank() const { return rank >= 0 || world_size >= 0 || !rendezvous.empty(); }
  bool leader() const { return rank <= 0; }
  // What --local-ranks hands on to every rank it starts.
  std::vector<std::string> Passthrough() const {
    std::vector<std::string> out;
    auto add = [&](const char* flag, const std::string& value) {
      if (!value.empty()) out.insert(out.end(), {flag, value});
    };
    add("--config", config_path);
    add("--job-proto-json", job_proto_json);
    add("--output-dir", output_dir);
    add("--attempt", attempt);
    add("--metrics-jsonl", metrics_path);
    if (threads >= 0) add("--threads", absl::StrCat(threads));
    if (total_tokens >= 0) add("--total-tokens", absl::StrCat(total_tokens));
    if (no_resume) out.push_back("--no-resume");
    if (quiet) out.push_back("--quiet");
    if (gather_checkpoints) out.push_back("--gather-checkpoints");
    if (metrics_all_ranks) out.push_back("--metrics-all-ranks");
    return out;
  }
};

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

TrainExitCode ExitCodeFor(const absl::Status& status) {
  if (IsOutOfMemory(status)) return TrainExitCode::kOutOfMemory;
  if (IsRestoreFailure(status)) return TrainExitCode::kRestoreFailed;
  if (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) return TrainExitCode::kPeerLost;
  if (absl::IsInvalidArgument(status) || absl::IsNotFound(status)) return TrainExitCode::kInvalidConfig;
  return TrainExitCode::kFailed;
}

// How this process ends: the message on stderr and, when it writes a metrics file, as its last
// record (a RankFailure).
class Outcome {
 public:
  explicit Outcome(const TrainOptions& options)
      : options_(options),
        who_(options.one_rank() ? absl::StrCat("saegrid[rank ", options.rank, "]") : "saegrid"),
        records_(!options.metrics_path.empty() &&
                 (options.leader() || (options.metrics_all_ranks && options.one_rank()))) {}

  const std::string& who() const { return who_; }

  // The metrics file of this process (null when it writes none); opened (truncated) once.
  MetricsLog* metrics() {
    if (!records_) return nullptr;
    if (!metrics_) metrics_ = std::make_unique<MetricsLog>(options_.metrics_path);
    return metrics_.get();
  }
  // Closes the file: a --local-ranks launcher leaves it to its rank 0.
  void StopRecording() {
    records_ = false;
    metrics_.reset();
  }

  // Prints "<who>: <message>" (then `more`, e.g. the usage) and records the failure.
  int Fail(TrainExitCode code, const std::string& message, const std::string& more = "") {
    absl::FPrintF(stderr, "%s: %s\n%s", who_, message, more);
    if (MetricsLog* log = metrics(); log != nullptr && log->ok()) log->WriteFailure(code, message);
    return End(ToInt(code));
  }

  // A rank exits at once: after a collective failed, LibTorch's process-group destructors may
  // wait on peers that are gone, and the exit must not.
  int End(int code) {
    if (options_.one_rank()) {
      metrics_.reset();
      std::fflush(stdout);
      std::fflush(stderr);
      std::_Exit(code);
    }
    return code;
  }

 private:
  const TrainOptions& options_;
  const std::string who_;
  bool records_;
  std::unique_ptr<MetricsLog> metrics_;
};

absl::StatusOr<v1::JobSpec> ReadJobProtoJson(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--job-proto-json ", path, ": cannot read the file"));
  std::stringstream text;
  text << in.rdbuf();
  v1::JobSpec spec;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(text.str(), &spec, options);
  if (!status.ok()) {
    const auto message = status.message();  // StringPiece or string_view, by protobuf version
    return absl::InvalidArgumentError(
        absl::StrCat("--job-proto-json ", path, ": ", std::string(message.data(), message.size())));
  }
  return spec;
}

int Train(const TrainOptions& o, Outcome& outcome) {
  const std::string source = o.config_path.empty() ? o.job_proto_json : o.config_path;
  auto spec = o.config_path.empty() ? ReadJobProtoJson(o.job_proto_json) : LoadJobSpecFile(o.config_path);
  if (!spec.ok()) {
    return outcome.Fail(TrainExitCode::kInvalidConfig, absl::StrCat("invalid config: ", spec.status().message()));
  }
  if (o.total_tokens >= 0) spec->mutable_training()->set_total_tokens(o.total_tokens);
  if (o.threads >= 0) spec->mutable_resources()->set_num_threads(o.threads);
  if (!o.output_dir.empty()) spec->mutable_checkpoint()->set_output_dir(o.output_dir);
  if (o.no_resume) spec->mutable_checkpoint()->set_resume(false);
  auto config = ToTrainConfig(*spec);
  if (!config.ok()) {
    return outcome.Fail(TrainExitCode::kInvalidConfig,
                        absl::StrCat("invalid config ", source, ": ", config.status().message()));
  }
  config->checkpoint.gather_to_leader = o.gather_checkpoints;
  if (config->model.compute_dtype == ComputeDtype::kBFloat16 && !CpuHasNativeBFloat16()) {
    absl::FPrintF(stderr, "saegrid: warning: model.compute_dtype is bfloat16 but this CPU has neither "
                          "AMX-BF16 nor AVX512-BF16; the encoder matmul is emulated and slower than float32\n");
  }
  const int64_t gang_size = config->parallelism.shards * config->parallelism.replicas;
  if (!o.one_rank() && (o.local_ranks > 0 || gang_size > 1)) {
    if (o.local_ranks > 0 && o.local_ranks != gang_size) {
      return outcome.Fail(TrainExitCode::kInvalidConfig,
                          absl::StrFormat("--local-ranks %d but parallelism.shards x replicas = %d x %d = %d",
                                          o.local_ranks, config->parallelism.shards, config->parallelism.replicas,
                                          gang_size));
    }
    if (gang_size > 1) {
      outcome.StopRecording();
      return RunLocalRanks(static_cast<int>(gang_size), o.Passthrough(), o.threads >= 0,
                           config->parallelism.timeout_seconds + 5);
    }
  }
  MetricsLog* metrics = outcome.metrics();
  if (metrics != nullptr && !metrics->ok()) {
    outcome.StopRecording();
    return outcome.Fail(TrainExitCode::kInvalidConfig, absl::StrCat("cannot write --metrics-jsonl ", o.metrics_path));
  }
  if (o.one_rank() && o.threads < 0 && config->runtime.num_threads == 0) {
    // Ranks that share this machine split its cores.
    int64_t sharing = 1;
    if (const char* env = std::getenv("SAEGRID_LOCAL_RANKS"); env != nullptr) {
      if (!absl::SimpleAtoi(env, &sharing) || sharing < 1) sharing = 1;
    }
    const int64_t cores = AvailableCores();
    config->runtime.num_threads = static_cast<int>(std::max<int64_t>(1, cores / sharing));
  }

  std::unique_ptr<Gang> gang;
  if (o.one_rank()) {
    RendezvousOptions options;
    auto st = ParseHostPort(o.rendezvous, "--rendezvous", &options.host, &options.port);
    if (!st.ok()) return outcome.Fail(TrainExitCode::kInvalidConfig, std::string(st.message()));
    options.rank = static_cast<int>(o.rank);
    options.world_size = static_cast<int>(o.world_size);
    options.attempt = o.attempt;
    options.timeout = std::chrono::milliseconds(static_cast<int64_t>(config->parallelism.timeout_seconds * 1000));
    auto joined = JoinGang(config->parallelism, options, BindHost(options.host));
    if (!joined.ok()) return outcome.Fail(ExitCodeFor(joined.status()), std::string(joined.status().message()));
    gang = *std::move(joined);
  }
  auto trainer = Trainer::Create(*config, std::move(gang));
  if (!trainer.ok()) return outcome.Fail(ExitCodeFor(trainer.status()), std::string(trainer.status().message()));
  const auto& mc = (*trainer)->config().model;
  if (!o.quiet && o.leader()) {
    const auto& layout = (*trainer)->layout();
    absl::FPrintF(stdout, "saegrid train: %s SAE, d_in %d, %d latents, batch %d, %d steps, %d threads%s\n",
                  SparsityLabel(mc), mc.d_in, mc.num_latents, config->data.batch_size, (*trainer)->total_steps(), (*trainer)->threads(),
                  layout.world_size() > 1
                      ? absl::StrFormat(" per rank; %d shards x %d replicas, %d candidates per shard",
                                        layout.shards, layout.replicas, (*trainer)->candidates_per_shard())
                      : "");
  }
  g_trainer = trainer->get();
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  ProgressPrinter progress(stdout, config->training.log_every_steps, o.quiet || !o.leader());
  ObserverList observers;
  observers.Add(&progress);
  if (metrics != nullptr) {
    metrics->set_trainer(trainer->get());
    observers.Add(metrics);
  }
  auto result = (*trainer)->Train(&observers);
  g_trainer = nullptr;
  if (!result.ok()) {
    TrainExitCode code = ExitCodeFor(result.status());
    // A bad field cannot show up after training started; what does (a shard gone missing) is a failure.
    if (code == TrainExitCode::kInvalidConfig || (code == TrainExitCode::kPeerLost && !o.one_rank())) {
      code = TrainExitCode::kFailed;
    }
    return outcome.Fail(code, absl::StrCat("training failed: ", result.status().message()));
  }
  if (o.leader()) absl::FPrintF(stdout, "evaluation:\n%s", FormatEvalTable(*result));
  std::fflush(stdout);
  // A stop that another rank asked for (the gang agrees on stops) ends this rank early too.
  const bool stopped_early = (*trainer)->step() < (*trainer)->total_steps();
  return outcome.End(ToInt(g_interrupted || stopped_early ? TrainExitCode::kStopped : TrainExitCode::kOk));
}

}  // namespace

int RunTrainCommand(int argc, char** argv) {
  TrainOptions o;
  std::vector<std::string> positional;
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  auto parsed = ParseFlags(argc, argv,
                           {{"--config", FlagSpec::String(&o.config_path)},
                            {"--job-proto-json", FlagSpec::String(&o.job_proto_json)},
                            {"--output-dir", FlagSpec::String(&o.output_dir)},
                            {"--rendezvous", FlagSpec::String(&o.rendezvous)},
                            {"--attempt", FlagSpec::String(&o.attempt)},
                            {"--metrics-jsonl", FlagSpec::String(&o.metrics_path)},
                            {"--threads", FlagSpec::Int(&o.threads, 0, 1 << 16)},
                            {"--total-tokens", FlagSpec::Int(&o.total_tokens, 0, kMax)},
                            {"--rank", FlagSpec::Int(&o.rank, 0, 1 << 20)},
                            {"--world-size", FlagSpec::Int(&o.world_size, 0, 1 << 20)},
                            {"--local-ranks", FlagSpec::Int(&o.local_ranks, 0, 1 << 10)},
                            {"--no-resume", FlagSpec::Switch(&o.no_resume)},
                            {"--quiet", FlagSpec::Switch(&o.quiet)},
                            {"--gather-checkpoints", FlagSpec::Switch(&o.gather_checkpoints)},
                            {"--metrics-all-ranks", FlagSpec::Switch(&o.metrics_all_ranks)},
                            {"--help", FlagSpec::Switch(&o.help)},
                            {"-h", FlagSpec::Switch(&o.help)}},
                           &positional);
  if (o.help) {
    absl::FPrintF(stdout, "%s", kUsage);
    return 0;
  }
  Outcome outcome(o);
  auto usage_error = [&](const std::string& message) {
    return outcome.Fail(TrainExitCode::kInvalidConfig, message, kUsage);
  };
  if (!parsed.ok()) return usage_error(std::string(parsed.message()));
  if (!positional.empty()) return usage_error(absl::StrCat("unexpected argument '", positional[0], "'"));
  if (o.config_path.empty() == o.job_proto_json.empty()) {
    return usage_error("give exactly one of --config and --job-proto-json");
  }
  if (o.one_rank() && (o.rank < 0 || o.world_size < 1 || o.rendezvous.empty())) {
    return outcome.Fail(TrainExitCode::kInvalidConfig, "--rank, --world-size and --rendezvous go together");
  }
  if (o.one_rank() && o.local_ranks >= 0) {
    return outcome.Fail(TrainExitCode::kInvalidConfig,
                        "--local-ranks starts its own ranks; drop --rank/--world-size/--rendezvous");
  }
  // LibTorch reports a failed allocation (and its other errors) by throwing, from wherever the
  // tensor was made; here they become an exit code and one line instead of an abort.
  try {
    return Train(o, outcome);
  } catch (const std::exception& e) {
    g_trainer = nullptr;
    const absl::Status status = StatusFromException(e);
    return outcome.Fail(IsOutOfMemory(status) ? TrainExitCode::kOutOfMemory : TrainExitCode::kFailed,
                        std::string(status.message()));
  } catch (...) {
    g_trainer = nullptr;
    return outcome.Fail(TrainExitCode::kFailed, "unknown exception");
  }
}

}  // namespace saegrid::cli
