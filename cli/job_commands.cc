#include "cli/job_commands.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "cli/client_connection.h"
#include "formats/checkpoint_archive.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "nlohmann/json.hpp"
#include "rpc/sha256.h"
#include "spec/job_spec_loader.h"

namespace saegrid::cli {
namespace {

namespace fs = std::filesystem;

std::string StateName(v1::JobState s) { return v1::JobState_Name(s).substr(10); }

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, options);
  return out;
}

std::string FormatTime(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixSeconds(t.seconds()), absl::LocalTimeZone());
}

int UsageError(const std::string& command, const std::string& message, const char* usage) {
  absl::FPrintF(stderr, "saegrid %s: %s\n%s%s", command, message, usage, kConnectionFlagsHelp);
  return kExitUsage;
}

// Splits the command's own flags and positional arguments after the connection flags are gone.
struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;
  std::set<std::string> switches;
};

// Parses the connection's flags and the command's own (base/flags.h) in one pass.
absl::Status ParseArgs(const std::vector<std::string>& args, const std::set<std::string>& value_flags,
                       const std::set<std::string>& switch_flags, ClientConnection* conn, Args* out) {
  std::map<std::string, std::string> values;  // every declared flag; the ones given are copied out
  std::map<std::string, bool> switches;
  std::map<std::string, FlagSpec> flags;
  conn->AddFlags(&flags);
  for (const auto& f : value_flags) flags[f] = FlagSpec::String(&values[f]);
  for (const auto& f : switch_flags) flags[f] = FlagSpec::Switch(&switches[f]);
  if (auto st = ParseFlags(args, flags, &out->positional); !st.ok()) return st;
  for (const auto& [flag, value] : values) {
    if (!value.empty()) out->values[flag] = value;
  }
  for (const auto& [flag, on] : switches) {
    if (on) out->switches.insert(flag);
  }
  return absl::OkStatus();
}

// Connects and splits the arguments of a command that takes one positional argument (`what`);
// returns the exit code when the arguments are wrong.
std::optional<int> Prepare(const std::string& command, const char* usage, const char* what, int argc, char** argv,
                           const std::set<std::string>& value_flags, const std::set<std::string>& switch_flags,
                           ClientConnection* conn, Args* args) {
  auto st = ParseArgs(std::vector<std::string>(argv, argv + argc), value_flags, switch_flags, conn, args);
  if (!st.ok()) return UsageError(command, std::string(st.message()), usage);
  if (args->positional.size() != 1) return UsageError(command, absl::StrCat("expected one ", what), usage);
  if (st = conn->Connect(); !st.ok()) return UsageError(command, std::string(st.message()), usage);
  return std::nullopt;
}

std::string NewRequestId() {
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(getpid()));
  return absl::StrFormat("%016x%016x", rng(), rng());
}

void PrintJob(const v1::Job& job) {
  const auto& p = job.progress();
  absl::PrintF("job        %s%s\n", job.job_id(), job.spec().name().empty() ? "" : "  (" + job.spec().name() + ")");
  absl::PrintF("state      %s%s\n", StateName(job.state()),
               job.failure_reason() != v1::FAILURE_REASON_UNSPECIFIED
                   ? "  reason " + v1::FailureReason_Name(job.failure_reason()).substr(15)
                   : "");
  if (!job.message().empty()) absl::PrintF("message    %s\n", job.message());
  if (!job.pending_reason().empty()) absl::PrintF("waiting    %s\n", job.pending_reason());
  absl::PrintF("layout     %d shards x %d replicas, %s\n", std::max<int64_t>(1, job.spec().parallelism().shards()),
               std::max<int64_t>(1, job.spec().parallelism().replicas()),
               job.spec().parallelism().device().empty() ? "cpu" : job.spec().parallelism().device());
  absl::PrintF("progress   step %d/%d, %d/%d tokens, FVU %.4f, dead %.2f%%\n", p.step(), p.total_steps(), p.tokens(),
               p.total_tokens(), p.fvu(), 100 * p.dead_fraction());
  absl::PrintF("attempts   %d (restarts %d/%d), tokens consumed %d\n", job.attempts_size(), job.restarts(),
               job.spec().max_restarts(), job.tokens_consumed());
  for (const auto& a : job.attempts()) {
    absl::PrintF("  #%d %s  from step %d  last step %d  lost tokens %d  %s\n", a.number(),
                 absl::StrJoin(a.worker_ids(), ","), a.resumed_from_step(), a.last_step(), a.lost_tokens(),
                 a.end_reason().empty() ? "running" : a.end_reason());
  }
  absl::PrintF("checkpoint %s\n", job.latest_checkpoint_step() > 0 ? absl::StrCat("step ", job.latest_checkpoint_step()) : "none");
  absl::PrintF("created    %s   ended %s\n", FormatTime(job.create_time()), FormatTime(job.end_time()));
}

int JobExitCode(const v1::Job& job) {
  if (job.state() == v1::JOB_STATE_FAILED) return kExitJobFailed;
  if (job.state() == v1::JOB_STATE_CANCELLED) return kExitJobCancelled;
  return kExitOk;
}

// Streams WatchJob until the job is terminal; returns the exit code for its final state.
int Watch(ClientConnection& conn, const std::string& job_id) {
  const bool tty = isatty(STDOUT_FILENO);
  auto ctx = conn.Context(0);
  v1::WatchJobRequest request;
  request.set_job_id(job_id);
  request.set_progress_interval_seconds(1);
  auto reader = conn.stub->WatchJob(ctx.get(), request);
  v1::JobUpdate update;
  v1::Job last;
  bool bar_shown = false;
  while (reader->Read(&update)) {
    last = update.job();
    if (conn.json) {
      absl::PrintF("%s\n", ToJson(update));
      std::fflush(stdout);
      continue;
    }
    if (update.has_event() || (update.revision() == last.revision() && !bar_shown && update.job().progress().step() == 0)) {
      if (bar_shown && tty) absl::PrintF("\n");
      bar_shown = false;
      if (update.has_event()) {
        absl::PrintF("%s  %-10s %s\n", FormatTime(update.event().time()), StateName(update.event().to_state()),
                     update.event().message());
      } else {
        absl::PrintF("%s  %-10s %s\n", FormatTime(last.update_time()), StateName(last.state()), last.message());
      }
    }
    const auto& p = last.progress();
    if (p.step() > 0 && !IsTerminal(last.state()) && (tty || !update.has_event())) {
      const double fraction = p.total_tokens() > 0 ? static_cast<double>(p.tokens()) / p.total_tokens() : 0;
      const int width = 30, filled = static_cast<int>(fraction * width);
      const std::string bar = std::string(filled, '#') + std::string(width - filled, '.');
      absl::PrintF("%s[%s] %5.1f%%  step %d/%d  FVU %.4f  L0 %.1f  dead %.2f%%  %.0f tok/s%s", tty ? "\r" : "", bar,
                   100 * fraction, p.step(), p.total_steps(), p.fvu(), p.l0(), 100 * p.dead_fraction(),
                   p.tokens_per_second(), tty ? "" : "\n");
      bar_shown = true;
    }
    std::fflush(stdout);
  }
  if (bar_shown && tty) absl::PrintF("\n");
  grpc::Status status = reader->Finish();
  if (!status.ok()) return ReportRpcError("watch", status);
  if (!conn.json) absl::PrintF("job %s %s\n", last.job_id(), StateName(last.state()));
  return JobExitCode(last);
}

constexpr char kSubmitUsage[] =
    "usage: saegrid submit FILE [--wait] [--request-id ID]\n"
    "  submits the job specification FILE (YAML or JSON, as for `saegrid train`); --wait watches\n"
    "  it to the end. Resubmitting with the same --request-id returns the existing job.\n";

}  // namespace

int RunSubmitCommand(int argc, char** argv) {
  ClientConnection conn;
  Args args;
  if (auto code = Prepare("submit", kSubmitUsage, "FILE", argc, argv, {"--request-id"}, {"--wait"}, &conn, &args)) {
    return *code;
  }
  auto spec = LoadJobSpecFile(args.positional[0]);
  if (!spec.ok()) {
    absl::FPrintF(stderr, "saegrid submit: invalid job spec: %s\n", spec.status().message());
    return kExitUsage;
  }
  v1::SubmitJobRequest request;
  request.set_request_id(args.values.count("--request-id") ? args.values["--request-id"] : NewRequestId());
  *request.mutable_spec() = *spec;
  v1::SubmitJobResponse response;
  grpc::Status status = conn.stub->SubmitJob(conn.Context().get(), request, &response);
  if (!status.ok()) return ReportRpcError("submit", status);
  if (conn.json) {
    absl::PrintF("%s\n", ToJson(response));
  } else {
    absl::PrintF("%s %s (request %s)\n", response.created() ? "submitted" : "already submitted as",
                 response.job().job_id(), request.request_id());
  }
  std::fflush(stdout);
  if (!args.switches.count("--wait")) return kExitOk;
  return Watch(conn, response.job().job_id());
}

int RunGetCommand(int argc, char** argv) {
  static const char usage[] = "usage: saegrid get JOB [--events]\n";
  ClientConnection conn;
  Args args;
  if (auto code = Prepare("get", usage, "JOB", argc, argv, {}, {"--events"}, &conn, &args)) return *code;
  v1::GetJobRequest request;
  request.set_job_id(args.positional[0]);
  v1::Job job;
  grpc::Status status = conn.stub->GetJob(conn.Context().get(), request, &job);
  if (!status.ok()) return ReportRpcError("get", status);
  v1::ListJobEventsResponse events;
  if (args.switches.count("--events")) {
    v1::ListJobEventsRequest er;
    er.set_job_id(job.job_id());
    status = conn.stub->ListJobEvents(conn.Context().get(), er, &events);
    if (!status.ok()) return ReportRpcError("get", status);
  }
  if (conn.json) {
    absl::PrintF("%s\n", ToJson(job));
    for (const auto& e : events.events()) absl::PrintF("%s\n", ToJson(e));
    return kExitOk;
  }
  PrintJob(job);
  for (const auto& e : events.events()) {
    absl::PrintF("%6d  %s  %-10s %s\n", e.sequence(), FormatTime(e.time()), StateName(e.to_state()), e.message());
  }
  return kExitOk;
}

int RunListCommand(int argc, char** argv) {
  static const char usage[] =
      "usage: saegrid list [--state STATE[,STATE]] [--label KEY=VALUE]... [--page-size N] [--page-token T] [--all]\n";
  ClientConnection conn;
  std::string states, page_token;
  std::vector<std::string> labels, positional;
  int64_t page_size = 0;
  bool all_pages = false;
  std::map<std::string, FlagSpec> flags = {{"--all", FlagSpec::Switch(&all_pages)},
                                           {"--state", FlagSpec::String(&states)},
                                           {"--label", FlagSpec::List(&labels)},
                                           {"--page-size", FlagSpec::Int(&page_size, 0, 1 << 30)},
                                           {"--page-token", FlagSpec::String(&page_token)}};
  conn.AddFlags(&flags);
  if (auto st = ParseFlags(argc, argv, flags, &positional); !st.ok()) {
    return UsageError("list", std::string(st.message()), usage);
  }
  if (!positional.empty()) return UsageError("list", absl::StrCat("unexpected argument ", positional[0]), usage);
  if (auto st = conn.Connect(); !st.ok()) return UsageError("list", std::string(st.message()), usage);
  v1::ListJobsRequest request;
  if (!states.empty()) {
    for (absl::string_view s : absl::StrSplit(states, ',')) {
      v1::JobState state;
      if (!v1::JobState_Parse(absl::StrCat("JOB_STATE_", absl::AsciiStrToUpper(s)), &state)) {
        return UsageError("list", absl::StrCat("--state: unknown state '", s, "'"), usage);
      }
      request.add_states(state);
    }
  }
  for (const std::string& label : labels) {
    std::vector<std::string> kv = absl::StrSplit(label, absl::MaxSplits('=', 1));
    if (kv.size() != 2) return UsageError("list", "--label: expected KEY=VALUE", usage);
    (*request.mutable_labels())[kv[0]] = kv[1];
  }
  request.set_page_size(static_cast<int>(page_size));
  request.set_page_token(page_token);
  if (!conn.json) absl::PrintF("%-12s %-11s %-24s %-18s %s\n", "JOB", "STATE", "NAME", "PROGRESS", "MESSAGE");
  while (true) {
    v1::ListJobsResponse response;
    grpc::Status status = conn.stub->ListJobs(conn.Context().get(), request, &response);
    if (!status.ok()) return ReportRpcError("list", status);
    for (const auto& job : response.jobs()) {
      if (conn.json) {
        absl::PrintF("%s\n", ToJson(job));
        continue;
      }
      const auto& p = job.progress();
      absl::PrintF("%-12s %-11s %-24s %-18s %s\n", job.job_id(), StateName(job.state()), job.spec().name().substr(0, 24),
                   absl::StrFormat("%d/%d steps", p.step(), p.total_steps()),
                   job.pending_reason().empty() ? job.message() : job.pending_reason());
    }
    if (response.next_page_token().empty()) break;
    if (!all_pages) {
      if (!conn.json) absl::PrintF("more: --page-token %s\n", response.next_page_token());
      break;
    }
    request.set_page_token(response.next_page_token());
  }
  return kExitOk;
}

int RunWatchCommand(int argc, char** argv) {
  static const char usage[] = "usage: saegrid watch JOB\n";
  ClientConnection conn;
  Args args;
  if (auto code = Prepare("watch", usage, "JOB", argc, argv, {}, {}, &conn, &args)) return *code;
  return Watch(conn, args.positional[0]);
}

int RunCancelCommand(int argc, char** argv) {
  static const char usage[] = "usage: saegrid cancel JOB [--grace SECONDS] [--wait]\n";
  ClientConnection conn;
  Args args;
  if (auto code = Prepare("cancel", usage, "JOB", argc, argv, {"--grace"}, {"--wait"}, &conn, &args)) return *code;
  v1::CancelJobRequest request;
  request.set_job_id(args.positional[0]);
  if (args.values.count("--grace")) {
    double grace = 0;
    if (!absl::SimpleAtod(args.values["--grace"], &grace)) return UsageError("cancel", "--grace: expected seconds", usage);
    request.set_grace_seconds(grace);
  }
  v1::Job job;
  grpc::Status status = conn.stub->CancelJob(conn.Context().get(), request, &job);
  if (!status.ok()) return ReportRpcError("cancel", status);
  if (conn.json) absl::PrintF("%s\n", ToJson(job));
  else absl::PrintF("%s %s\n", job.job_id(), StateName(job.state()));
  std::fflush(stdout);
  if (!args.switches.count("--wait")) return kExitOk;
  const int code = Watch(conn, job.job_id());
  return code == kExitJobCancelled ? kExitOk : code;
}

int RunDownloadCommand(int argc, char** argv) {
  static const char usage[] =
      "usage: saegrid download JOB [--step N] -o DIR [--keep-archive]\n"
      "  downloads a checkpoint (default: the newest), checks its sha256 and unpacks it into DIR;\n"
      "  an interrupted download resumes from DIR/<job>-step_N.tar.part\n";
  ClientConnection conn;
  Args args;
  if (auto code = Prepare("download", usage, "JOB", argc, argv, {"--step", "-o", "--output"}, {"--keep-archive"},
                          &conn, &args)) {
    return *code;
  }
  std::string out_dir = args.values.count("-o") ? args.values["-o"] : args.values["--output"];
  if (out_dir.empty()) return UsageError("download", "-o DIR is required", usage);
  int64_t step = 0;
  if (args.values.count("--step") && (!absl::SimpleAtoi(args.values["--step"], &step) || step <= 0)) {
    return UsageError("download", "--step: expected a positive step", usage);
  }
  const std::string job_id = args.positional[0];
  // Learn which step and size first, so that a partial file of that step can be resumed.
  v1::ListCheckpointsRequest lr;
  lr.set_job_id(job_id);
  v1::ListCheckpointsResponse list;
  grpc::Status status = conn.stub->ListCheckpoints(conn.Context().get(), lr, &list);
  if (!status.ok()) return ReportRpcError("download", status);
  const v1::CheckpointInfo* chosen = nullptr;
  for (const auto& c : list.checkpoints()) {
    if ((step == 0 && !c.bad()) || c.step() == step) chosen = &c;
  }
  if (chosen == nullptr) {
    absl::FPrintF(stderr, "saegrid download: job %s has no %s\n", job_id,
                  step ? absl::StrCat("checkpoint at step ", step) : std::string("checkpoint"));
    return kExitNotFound;
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  const std::string part = absl::StrFormat("%s/%s-step_%09d.tar.part", out_dir, job_id, chosen->step());
  int64_t offset = fs::exists(part) ? static_cast<int64_t>(fs::file_size(part)) : 0;
  if (offset > chosen->size_bytes()) {
    fs::remove(part);
    offset = 0;
  }
  v1::DownloadCheckpointRequest request;
  request.set_job_id(job_id);
  request.set_step(chosen->step());
  request.set_offset(offset);
  auto ctx = conn.Context(0);
  auto reader = conn.stub->DownloadCheckpoint(ctx.get(), request);
  std::ofstream out(part, std::ios::binary | std::ios::app);
  v1::CheckpointChunk chunk;
  const bool tty = isatty(STDERR_FILENO);
  int64_t have = offset;
  while (reader->Read(&chunk)) {
    if (chunk.data().empty()) continue;
    out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    have += static_cast<int64_t>(chunk.data().size());
    if (tty && !conn.json) {
      absl::FPrintF(stderr, "\rdownloading step %d: %.1f/%.1f MB", chosen->step(), have / 1e6, chosen->size_bytes() / 1e6);
    }
  }
  out.close();
  if (tty && !conn.json) absl::FPrintF(stderr, "\n");
  status = reader->Finish();
  if (!status.ok()) return ReportRpcError("download", status);
  auto digest = rpc::Sha256OfFile(part);
  if (!digest.ok() || *digest != chosen->sha256()) {
    fs::remove(part);
    absl::FPrintF(stderr, "saegrid download: sha256 mismatch (got %s, expected %s); removed the partial file\n",
                  digest.ok() ? *digest : "unreadable", chosen->sha256());
    return kExitDataLoss;
  }
  auto st = UnpackArchive(part, out_dir);
  if (!st.ok()) {
    absl::FPrintF(stderr, "saegrid download: %s\n", st.message());
    return kExitDataLoss;
  }
  const std::string archive = part.substr(0, part.size() - 5);
  if (args.switches.count("--keep-archive")) fs::rename(part, archive, ec);
  else fs::remove(part, ec);
  const std::string step_dir = absl::StrFormat("%s/step_%09d", out_dir, chosen->step());
  if (conn.json) {
    nlohmann::json j = {{"job_id", job_id}, {"step", chosen->step()}, {"sha256", chosen->sha256()},
                        {"size_bytes", chosen->size_bytes()}, {"directory", step_dir}};
    absl::PrintF("%s\n", j.dump());
  } else {
    absl::PrintF("checkpoint step %d of %s (%.1f MB, sha256 %s) -> %s\n", chosen->step(), job_id,
                 chosen->size_bytes() / 1e6, chosen->sha256().substr(0, 16), step_dir);
  }
  return kExitOk;
}

namespace {

// The papers' evaluations the job ran (evaluation.run), from GetEvaluation's typed fields.
void PrintEvaluations(const v1::Evaluation& e) {
  auto line = [](const char* label, const std::string& value) { absl::PrintF("  %-28s %s\n", label, value); };
  if (e.has_downstream_loss()) {
    const auto& d = e.downstream_loss();
    line("loss recovered", absl::StrFormat("%.4f (mean ablation %.4f)", d.loss_recovered(), d.loss_recovered_mean_ablation()));
    line("CE clean / SAE / zero", absl::StrFormat("%.4f / %.4f / %.4f nats", d.ce_clean(), d.ce_sae(), d.ce_zero_ablation()));
    line("KL(clean || SAE)", absl::StrFormat("%.4g nats", d.kl_sae()));
  }
  if (e.has_ablation_sparsity()) {
    const auto& a = e.ablation_sparsity();
    line("ablation sparsity", absl::StrFormat("%.4g (coordinate baseline %.4g; %d ablations)", a.mean(), a.baseline_mean(),
                                              a.samples()));
  }
  if (e.has_token_stats()) {
    line("effective tokens per latent", absl::StrFormat("mean %.3g, median %.3g", e.token_stats().mean_effective_tokens(),
                                                        e.token_stats().median_effective_tokens()));
  }
  if (e.has_top_examples()) line("top examples", absl::StrFormat("%d latents (top_examples.json)", e.top_examples().latents()));
  if (e.has_n2g()) {
    const auto& n = e.n2g();
    line("N2G precision/recall/F1", absl::StrFormat("%.3f / %.3f / %.3f over %d latents", n.precision(), n.recall(), n.f1(),
                                                    n.latents()));
  }
  if (e.has_probes()) {
    const auto& p = e.probes();
    line("probe loss latent/channel", absl::StrFormat("%.4f / %.4f (prior %.4f, %d tasks)", p.mean_latent_loss(),
                                                      p.mean_channel_loss(), p.mean_prior_loss(), p.tasks()));
  }
  if (e.has_shrinkage()) {
    const auto& s = e.shrinkage();
    line("shrinkage", absl::StrFormat("%.4f (FVU %.4f -> %.4f)", s.mean_ratio(), s.fvu_before(), s.fvu_after()));
  }
  if (e.has_sae_comparison()) {
    const auto& c = e.sae_comparison();
    line("novel / reconstruction", absl::StrFormat("%.3f / %.3f at cosine %.2f", c.novel_fraction(),
                                                   c.reconstruction_fraction(), c.threshold()));
  }
}

}  // namespace

int RunResultsCommand(int argc, char** argv) {
  static const char usage[] = "usage: saegrid results JOB\n";
  ClientConnection conn;
  Args args;
  if (auto code = Prepare("results", usage, "JOB", argc, argv, {}, {}, &conn, &args)) return *code;
  v1::GetEvaluationRequest request;
  request.set_job_id(args.positional[0]);
  v1::Evaluation evaluation;
  grpc::Status status = conn.stub->GetEvaluation(conn.Context().get(), request, &evaluation);
  if (!status.ok()) return ReportRpcError("results", status);
  if (conn.json) {
    absl::PrintF("%s\n", evaluation.evaluation_json());
    return kExitOk;
  }
  absl::PrintF("evaluation of %s at step %d:\n", evaluation.job_id(), evaluation.step());
  auto j = nlohmann::json::parse(evaluation.evaluation_json(), nullptr, false);
  if (!j.is_object()) {
    absl::PrintF("%s\n", evaluation.evaluation_json());
    return kExitOk;
  }
  for (const auto& [key, value] : j.items()) {
    if (key == "evaluations") continue;  // printed from the typed fields below
    if (value.is_object() || value.is_array()) absl::PrintF("  %-28s %s\n", key, value.dump());
    else if (value.is_number_float()) absl::PrintF("  %-28s %.6g\n", key, value.get<double>());
    else absl::PrintF("  %-28s %s\n", key, value.dump());
  }
  PrintEvaluations(evaluation);
  if (j.contains("evaluations") && j["evaluations"].contains("error")) {
    absl::PrintF("  %-28s %s\n", "evaluations failed", j["evaluations"]["error"].get<std::string>());
  }
  return kExitOk;
}

}  // namespace saegrid::cli
