#include "worker/rank_run.h"

#include <signal.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/durable_file.h"
#include "base/exit_code.h"
#include "formats/checkpoint_archive.h"
#include "google/protobuf/util/json_util.h"
#include "rpc/security.h"
#include "rpc/sha256.h"
#include "worker/child_process.h"

namespace saegrid::worker {
namespace {

namespace fs = std::filesystem;

std::string Tail(const std::string& path, size_t bytes) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  return text.size() > bytes ? text.substr(text.size() - bytes) : text;
}

// The one place a rank's exit becomes its outcome (the numbers: base/exit_code.h). Known codes
// win over a requested stop: a rank that lost a peer torn down with it still lost a peer.
v1::RankOutcome OutcomeOf(const ExitStatus& exit, bool stop_requested) {
  const v1::RankOutcome otherwise = stop_requested ? v1::RANK_OUTCOME_STOPPED : v1::RANK_OUTCOME_FAILED;
  if (exit.signaled) return otherwise;
  switch (static_cast<TrainExitCode>(exit.code)) {
    case TrainExitCode::kOk: return v1::RANK_OUTCOME_SUCCEEDED;
    case TrainExitCode::kStopped: return v1::RANK_OUTCOME_STOPPED;
    case TrainExitCode::kPeerLost: return v1::RANK_OUTCOME_PEER_LOST;
    case TrainExitCode::kRestoreFailed: return v1::RANK_OUTCOME_RESTORE_FAILED;
    case TrainExitCode::kInvalidConfig: return v1::RANK_OUTCOME_INVALID_CONFIG;
    case TrainExitCode::kOutOfMemory: return v1::RANK_OUTCOME_OUT_OF_MEMORY;
    case TrainExitCode::kFailed: break;
  }
  return otherwise;
}

bool Retryable(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

}  // namespace

RankRun::RankRun(const WorkerSettings& settings, std::shared_ptr<v1::WorkerService::Stub> stub,
                 v1::Assignment assignment)
    : settings_(settings), stub_(std::move(stub)), assignment_(std::move(assignment)) {
  dir_ = absl::StrCat(settings_.data_dir, "/jobs/", assignment_.job_id(), "/", assignment_.attempt_id(), "-rank",
                      assignment_.rank());
}

RankRun::~RankRun() {
  RequestStop(false, absl::ZeroDuration());
  if (thread_.joinable()) thread_.join();
}

void RankRun::Start() { thread_ = std::thread([this] { Run(); }); }

void RankRun::RequestStop(bool final_checkpoint, absl::Duration grace, const std::string& why) {
  absl::MutexLock lock(&mu_);
  if (stop_requested_ && (final_checkpoint || !final_checkpoint_)) return;
  stop_requested_ = true;
  stop_reason_ = why;
  final_checkpoint_ = final_checkpoint;
  kill_at_ = final_checkpoint ? absl::Now() + grace : absl::Now();
}

template <typename Call>
grpc::Status RankRun::Retry(Call call, absl::Duration patience) {
  const absl::Time give_up = absl::Now() + patience;
  absl::Duration backoff = absl::Milliseconds(200);
  while (true) {
    grpc::ClientContext ctx;
    rpc::AttachToken(&ctx, settings_.token);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
    grpc::Status status = call(&ctx);
    if (status.ok() || !Retryable(status) || absl::Now() + backoff > give_up) return status;
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
}

absl::Status RankRun::FetchResumeCheckpoint(const std::string& checkpoints_dir) {
  const auto& info = assignment_.resume_from();
  const std::string archive = dir_ + "/resume.tar";
  std::ofstream out(archive, std::ios::binary | std::ios::trunc);
  rpc::Sha256 hash;
  int64_t received = 0;
  grpc::Status status = Retry(
      [&](grpc::ClientContext* ctx) {
        v1::FetchCheckpointRequest request;
        request.set_job_id(assignment_.job_id());
        request.set_attempt_id(assignment_.attempt_id());
        request.set_rank(assignment_.rank());
        request.set_rank_credential(assignment_.rank_credential());
        request.set_step(info.step());
        request.set_offset(received);  // a retry continues where the last stream broke
        auto reader = stub_->FetchCheckpoint(ctx, request);
        v1::CheckpointChunk chunk;
        while (reader->Read(&chunk)) {
          if (chunk.data().empty()) continue;
          out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
          hash.Update(chunk.data());
          received += static_cast<int64_t>(chunk.data().size());
        }
        return reader->Finish();
      },
      absl::Minutes(5));
  out.close();
  if (!status.ok()) return rpc::FromGrpcStatus(status);
  if (received != info.size_bytes()) {
    return absl::DataLossError(absl::StrCat("received ", received, " of ", info.size_bytes(), " bytes"));
  }
  if (const std::string digest = hash.HexDigest(); digest != info.sha256()) {
    return absl::DataLossError(absl::StrCat("sha256 mismatch: got ", digest, ", expected ", info.sha256()));
  }
  auto st = UnpackArchive(archive, checkpoints_dir);
  fs::remove(archive);
  return st;
}

absl::Status RankRun::UploadCheckpoint(const v1::CheckpointWritten& checkpoint) {
  const std::string& step_dir = checkpoint.directory();
  const int64_t step = checkpoint.step();
  const std::string archive = absl::StrFormat("%s/upload_step_%09d.tar", dir_, step);
  if (auto st = PackDirectory(step_dir, archive); !st.ok()) return st;
  auto digest = rpc::Sha256OfFile(archive);
  if (!digest.ok()) return digest.status();
  const int64_t size = static_cast<int64_t>(fs::file_size(archive));
  v1::UploadCheckpointHeader header;
  header.set_worker_id(settings_.worker_id);
  header.set_job_id(assignment_.job_id());
  header.set_attempt_id(assignment_.attempt_id());
  header.set_rank(assignment_.rank());
  header.set_rank_credential(assignment_.rank_credential());
  header.set_step(step);
  header.set_tokens(checkpoint.tokens());
  header.set_size_bytes(size);
  header.set_sha256(*digest);
  // The trainer evaluates only when it ends (done or stopped), so the evaluated one is final.
  header.set_has_evaluation(fs::exists(step_dir + "/evaluation.json"));
  header.set_final(header.has_evaluation());
  grpc::Status status = Retry(
      [&](grpc::ClientContext* ctx) {
        v1::UploadCheckpointResponse response;
        auto writer = stub_->UploadCheckpoint(ctx, &response);
        v1::UploadCheckpointChunk chunk;
        *chunk.mutable_header() = header;
        if (!writer->Write(chunk)) return writer->Finish();
        std::ifstream in(archive, std::ios::binary);
        std::vector<char> buffer(rpc::kChunkBytes);
        while (in) {
          in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
          if (in.gcount() == 0) break;
          chunk.set_data(buffer.data(), static_cast<size_t>(in.gcount()));
          if (!writer->Write(chunk)) break;
        }
        writer->WritesDone();
        return writer->Finish();
      },
      absl::Minutes(5));
  fs::remove(archive);
  return rpc::FromGrpcStatus(status);
}

void RankRun::ReadMetrics(const std::string& path, int64_t* offset) {
  std::ifstream in(path);
  if (!in) return;
  in.seekg(*offset);
  std::string line;
  // The rank and this worker are built together; a field only a newer rank writes is skipped
  // rather than costing the whole record.
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  while (std::getline(in, line)) {
    if (in.eof()) break;  // a line still being written
    *offset = static_cast<int64_t>(in.tellg());
    v1::RankEvent event;
    if (!google::protobuf::util::JsonStringToMessage(line, &event, options).ok()) {
      std::fprintf(stderr, "saegrid-worker: %s: not a saegrid.v1.RankEvent: %.200s\n", path.c_str(), line.c_str());
      continue;
    }
    switch (event.event_case()) {
      case v1::RankEvent::kStep:
        if (series_) series_->OnStep(event.step());
        progress_ = event.step().progress();
        break;
      case v1::RankEvent::kCheckpoint:
        if (series_) series_->OnCheckpoint(event.checkpoint());
        if (assignment_.rank() == 0) new_checkpoints_.push_back(event.checkpoint());
        break;
      case v1::RankEvent::kEvaluation:
        evaluation_ = event.evaluation();
        evaluation_->set_job_id(assignment_.job_id());
        break;
      case v1::RankEvent::kFailure:
        failure_ = event.failure();
        break;
      case v1::RankEvent::EVENT_NOT_SET:
        break;
    }
  }
}

void RankRun::Report(v1::RankOutcome outcome, int exit_code, const std::string& message) {
  v1::ReportResultRequest request;
  request.set_worker_id(settings_.worker_id);
  request.set_job_id(assignment_.job_id());
  request.set_attempt_id(assignment_.attempt_id());
  request.set_rank(assignment_.rank());
  request.set_rank_credential(assignment_.rank_credential());
  request.set_outcome(outcome);
  request.set_exit_code(exit_code);
  request.set_message(message.size() > 4000 ? message.substr(message.size() - 4000) : message);
  if (evaluation_) {
    request.set_evaluation_json(evaluation_->evaluation_json());
    *request.mutable_evaluation() = *evaluation_;
  }
  request.set_final_step(progress_.step());
  request.set_final_tokens(progress_.tokens());
  *request.mutable_final_progress() = progress_;
  grpc::Status status = Retry(
      [&](grpc::ClientContext* ctx) {
        v1::ReportResultResponse response;
        return stub_->ReportResult(ctx, request, &response);
      },
      absl::Minutes(10));
  if (!status.ok()) {
    std::fprintf(stderr, "saegrid-worker: result of %s rank %d not delivered: %s\n", assignment_.attempt_id().c_str(),
                 assignment_.rank(), status.error_message().c_str());
  }
  if (settings_.metrics) {
    std::string name = v1::RankOutcome_Name(outcome).substr(std::string("RANK_OUTCOME_").size());
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    series_.reset();
    settings_.metrics->RankEnded(name);
  }
  finished_.store(true);
}

void RankRun::Run() {
  if (settings_.metrics) {
    settings_.metrics->RankStarted();
    series_ = std::make_unique<metrics::TrainingMetrics::Rank>(settings_.metrics, assignment_.job_id(),
                                                               assignment_.rank(), assignment_.resume_from().tokens());
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
  const std::string out_dir = dir_ + "/out";
  fs::create_directories(out_dir + "/checkpoints", ec);
  if (ec) return Report(v1::RANK_OUTCOME_FAILED, -1, absl::StrCat("cannot create ", dir_, ": ", ec.message()));
  if (assignment_.resume_from().step() > 0) {
    auto st = FetchResumeCheckpoint(out_dir + "/checkpoints");
    if (!st.ok()) {
      return Report(v1::RANK_OUTCOME_RESTORE_FAILED, -1,
                    absl::StrCat("checkpoint at step ", assignment_.resume_from().step(), ": ", st.message()));
    }
    progress_.set_step(assignment_.resume_from().step());
    progress_.set_tokens(assignment_.resume_from().tokens());
  }
  // The spec as the rank reads it: this attempt's output directory, every checkpoint kept until
  // uploaded (the worker prunes), and this worker's thread budget.
  v1::JobSpec spec = assignment_.spec();
  spec.mutable_checkpoint()->set_output_dir(out_dir);
  spec.mutable_checkpoint()->set_keep_last(0);
  spec.mutable_checkpoint()->set_resume(true);
  if (settings_.threads > 0) spec.mutable_resources()->set_num_threads(settings_.threads);
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(spec, &json, options).ok()) {
    return Report(v1::RANK_OUTCOME_FAILED, -1, "cannot encode the job as proto JSON");
  }
  const std::string job_file = dir_ + "/job.json";
  if (auto st = WriteFileDurably(job_file, json); !st.ok()) {
    return Report(v1::RANK_OUTCOME_FAILED, -1, std::string(st.message()));
  }
  const std::string metrics = dir_ + "/metrics.jsonl";
  const std::string log = dir_ + "/rank.log";
  auto child = ChildProcess::Start(
      {settings_.trainer, "--job-proto-json", job_file, "--rank", std::to_string(assignment_.rank()), "--world-size",
       std::to_string(assignment_.world_size()), "--rendezvous", assignment_.rendezvous(), "--attempt",
       assignment_.attempt_id(), "--metrics-jsonl", metrics, "--metrics-all-ranks", "--gather-checkpoints", "--quiet"},
      log, {{"SAEGRID_BIND_HOST", settings_.host}});
  if (!child.ok()) return Report(v1::RANK_OUTCOME_FAILED, -1, std::string(child.status().message()));

  const bool leader = assignment_.rank() == 0;
  // The coordinator knows where the attempt starts; the first step trained past it is reported
  // as soon as it is seen, later ones at most once a second.
  int64_t metrics_offset = 0, reported_step = progress_.step();
  absl::Time last_report = absl::InfinitePast();
  bool signalled = false;
  std::optional<ExitStatus> exit;
  auto upload_new = [&] {
    for (const auto& checkpoint : new_checkpoints_) {
      auto st = UploadCheckpoint(checkpoint);
      if (!st.ok()) {
        std::fprintf(stderr, "saegrid-worker: upload of %s failed: %s\n", checkpoint.directory().c_str(),
                     std::string(st.message()).c_str());
      }
      fs::remove_all(checkpoint.directory(), ec);  // the coordinator holds it now; the rank never reads it again
    }
    new_checkpoints_.clear();
  };
  while (!exit) {
    absl::SleepFor(absl::Milliseconds(200));
    exit = child->Poll();
    {
      absl::MutexLock lock(&mu_);
      if (stop_requested_ && !signalled) {
        child->Signal(final_checkpoint_ ? SIGTERM : SIGKILL);
        signalled = true;
      }
      if (stop_requested_ && absl::Now() >= kill_at_) child->Signal(SIGKILL);
    }
    ReadMetrics(metrics, &metrics_offset);
    if (!leader) continue;
    if (!new_checkpoints_.empty()) upload_new();
    if (progress_.step() != reported_step && absl::Now() - last_report >= absl::Seconds(1)) {
      v1::ReportProgressRequest request;
      request.set_worker_id(settings_.worker_id);
      request.set_job_id(assignment_.job_id());
      request.set_attempt_id(assignment_.attempt_id());
      request.set_rank(assignment_.rank());
      request.set_rank_credential(assignment_.rank_credential());
      *request.mutable_progress() = progress_;
      grpc::ClientContext ctx;
      rpc::AttachToken(&ctx, settings_.token);
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::ReportProgressResponse response;
      if (stub_->ReportProgress(&ctx, request, &response).ok()) reported_step = progress_.step();
      last_report = absl::Now();
    }
  }
  ReadMetrics(metrics, &metrics_offset);
  const v1::RankOutcome outcome = OutcomeOf(*exit, /*stop_requested=*/false);
  if (leader && (outcome == v1::RANK_OUTCOME_SUCCEEDED || outcome == v1::RANK_OUTCOME_STOPPED)) upload_new();
  ReportExit(*exit, log);
}

void RankRun::ReportExit(const ExitStatus& exit, const std::string& log_path) {
  bool stop_was_requested;
  std::string stop_reason;
  {
    absl::MutexLock lock(&mu_);
    stop_was_requested = stop_requested_;
    stop_reason = stop_reason_;
  }
  const v1::RankOutcome outcome = OutcomeOf(exit, stop_was_requested);
  const int code = exit.ShellCode();
  if (outcome == v1::RANK_OUTCOME_SUCCEEDED) return Report(outcome, code, "");
  if (outcome == v1::RANK_OUTCOME_STOPPED) {
    if (!exit.signaled && exit.code == ToInt(TrainExitCode::kStopped)) {
      return Report(outcome, code, stop_reason.empty() ? "stopped after a final checkpoint" : stop_reason);
    }
    return Report(outcome, code,
                  exit.signaled ? absl::StrCat(exit.Describe(), " on request")
                                : absl::StrCat("stopped on request (", exit.Describe(), ")"));
  }
  // The rank's own account when it gave one; else how it ended and what it printed last.
  if (failure_ && !failure_->message().empty()) return Report(outcome, code, failure_->message());
  const std::string tail = Tail(log_path, 2000);
  return Report(outcome, code, tail.empty() ? exit.Describe() : absl::StrCat(exit.Describe(), "; last output:\n", tail));
}

}  // namespace saegrid::worker
