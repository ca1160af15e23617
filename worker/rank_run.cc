#include "worker/rank_run.h"

#include <signal.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/checkpoint_archive.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
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

absl::Status RankRun::UploadCheckpoint(const std::string& step_dir, int64_t step) {
  const std::string archive = absl::StrFormat("%s/upload_step_%09d.tar", dir_, step);
  if (auto st = PackDirectory(step_dir, archive); !st.ok()) return st;
  auto digest = rpc::Sha256OfFile(archive);
  if (!digest.ok()) return digest.status();
  const int64_t size = static_cast<int64_t>(fs::file_size(archive));
  v1::UploadCheckpointHeader header;
  header.set_worker_id(settings_.worker_id);
  header.set_job_id(assignment_.job_id());
  header.set_attempt_id(assignment_.attempt_id());
  header.set_step(step);
  header.set_size_bytes(size);
  header.set_sha256(*digest);
  // The trainer evaluates only when it ends (done or stopped), so the evaluated one is final.
  header.set_has_evaluation(fs::exists(step_dir + "/evaluation.json"));
  header.set_final(header.has_evaluation());
  std::ifstream state(step_dir + "/trainer_state.json");
  auto j = nlohmann::json::parse(state, nullptr, false);
  if (j.is_object()) header.set_tokens(j.value("tokens", int64_t{0}));
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
  while (std::getline(in, line)) {
    if (in.eof()) break;  // a line still being written
    *offset = static_cast<int64_t>(in.tellg());
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object()) continue;
    if (j.contains("checkpoint")) {
      const std::string step_dir = j["checkpoint"].get<std::string>();
      if (series_) {
        int64_t bytes = 0;
        std::error_code ec;
        for (const auto& e : fs::recursive_directory_iterator(step_dir, ec)) {
          if (e.is_regular_file(ec)) bytes += static_cast<int64_t>(e.file_size(ec));
        }
        series_->OnCheckpoint(j.value("seconds", 0.0), bytes);
      }
      if (assignment_.rank() == 0) new_checkpoints_.emplace_back(step_dir, j.value("step", int64_t{0}));
    } else if (j.contains("evaluation")) {
      evaluation_json_ = j["evaluation"].dump(2);
    } else if (j.contains("loss")) {
      if (series_) series_->OnStep(j);
      progress_.set_step(j.value("step", int64_t{0}));
      progress_.set_total_steps(j.value("total_steps", int64_t{0}));
      progress_.set_tokens(j.value("tokens", int64_t{0}));
      progress_.set_loss(j.value("loss", 0.0));
      progress_.set_fvu(j.value("fvu", 0.0));
      progress_.set_mse(j.value("mse", 0.0));
      progress_.set_auxk_loss(j.value("auxk_loss", 0.0));
      progress_.set_l0(j.value("l0", 0.0));
      progress_.set_num_dead(j.value("num_dead", int64_t{0}));
      progress_.set_dead_fraction(j.value("dead_fraction", 0.0));
      progress_.set_lr(j.value("lr", 0.0));
      progress_.set_tokens_per_second(j.value("tokens_per_second", 0.0));
      progress_.set_step_seconds(j.value("step_seconds", 0.0));
      progress_.set_overflow_rate(j.value("overflow_rate", 0.0));
    }
  }
}

void RankRun::Report(v1::RankOutcome outcome, int exit_code, const std::string& message) {
  v1::ReportResultRequest request;
  request.set_worker_id(settings_.worker_id);
  request.set_job_id(assignment_.job_id());
  request.set_attempt_id(assignment_.attempt_id());
  request.set_rank(assignment_.rank());
  request.set_outcome(outcome);
  request.set_exit_code(exit_code);
  request.set_message(message.size() > 4000 ? message.substr(message.size() - 4000) : message);
  request.set_evaluation_json(evaluation_json_);
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
  (void)google::protobuf::util::MessageToJsonString(spec, &json, options);
  const std::string config = dir_ + "/job.json";
  std::ofstream(config) << json;
  const std::string metrics = dir_ + "/metrics.jsonl";
  const std::string log = dir_ + "/rank.log";
  auto child = ChildProcess::Start(
      {settings_.trainer, "train", "--config", config, "--rank", std::to_string(assignment_.rank()), "--world-size",
       std::to_string(assignment_.world_size()), "--rendezvous", assignment_.rendezvous(), "--attempt",
       assignment_.attempt_id(), "--metrics-jsonl", metrics, "--metrics-all-ranks", "--gather-checkpoints", "--quiet"},
      log, {{"SAEGRID_BIND_HOST", settings_.host}});
  if (!child.ok()) return Report(v1::RANK_OUTCOME_FAILED, -1, std::string(child.status().message()));

  const bool leader = assignment_.rank() == 0;
  int64_t metrics_offset = 0, reported_step = -1;
  absl::Time last_report = absl::InfinitePast();
  bool signalled = false;
  std::optional<int> exit_code;
  auto upload_new = [&] {
    for (const auto& [step_dir, step] : new_checkpoints_) {
      auto st = UploadCheckpoint(step_dir, step);
      if (!st.ok()) {
        std::fprintf(stderr, "saegrid-worker: upload of %s failed: %s\n", step_dir.c_str(), std::string(st.message()).c_str());
      }
      fs::remove_all(step_dir, ec);  // the coordinator holds it now; the rank never reads it again
    }
    new_checkpoints_.clear();
  };
  while (!exit_code) {
    absl::SleepFor(absl::Milliseconds(200));
    exit_code = child->Poll();
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
  if (leader && (*exit_code == 0 || *exit_code == 130)) upload_new();
  const std::string tail = Tail(log, 2000);
  bool stop_was_requested;
  std::string stop_reason;
  {
    absl::MutexLock lock(&mu_);
    stop_was_requested = stop_requested_;
    stop_reason = stop_reason_;
  }
  switch (*exit_code) {
    case 0: return Report(v1::RANK_OUTCOME_SUCCEEDED, 0, "");
    case 130:
      return Report(v1::RANK_OUTCOME_STOPPED, 130,
                    stop_reason.empty() ? "stopped after a final checkpoint" : stop_reason);
    case 3: return Report(v1::RANK_OUTCOME_PEER_LOST, 3, tail);
    case 4: return Report(v1::RANK_OUTCOME_RESTORE_FAILED, 4, tail);
    default:
      if (stop_was_requested) return Report(v1::RANK_OUTCOME_STOPPED, *exit_code, "killed on request");
      return Report(v1::RANK_OUTCOME_FAILED, *exit_code, tail);
  }
}

}  // namespace saegrid::worker
