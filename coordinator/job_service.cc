#include "coordinator/job_service.h"

#include <algorithm>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"

namespace saegrid::coordinator {
namespace {

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

}  // namespace

grpc::Status JobServiceImpl::SubmitJob(grpc::ServerContext* ctx, const v1::SubmitJobRequest* req,
                                       v1::SubmitJobResponse* resp) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kClient);
  auto r = coordinator_->SubmitJob(*req);
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::Job* resp) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kClient);
  auto r = coordinator_->GetJob(req->job_id());
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req,
                                      v1::ListJobsResponse* resp) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kClient);
  auto r = coordinator_->ListJobs(*req);
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req, v1::Job* resp) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kClient);
  if (!(req->grace_seconds() >= 0 && req->grace_seconds() <= 3600)) {  // NaN fails both
    return {grpc::StatusCode::INVALID_ARGUMENT, "grace_seconds: must be in [0, 3600]"};
  }
  auto r = coordinator_->CancelJob(req->job_id(), absl::Seconds(req->grace_seconds()));
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                                      grpc::ServerWriter<v1::JobUpdate>* writer) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kClient);
  if (!(req->progress_interval_seconds() >= 0 && req->progress_interval_seconds() <= 3600)) {  // NaN fails both
    return {grpc::StatusCode::INVALID_ARGUMENT, "progress_interval_seconds: must be in [0, 3600]"};
  }
  const absl::Duration interval =
      req->progress_interval_seconds() > 0 ? absl::Seconds(req->progress_interval_seconds()) : absl::Seconds(2);
  auto job = coordinator_->GetJob(req->job_id());
  if (!job.ok()) return rpc::ToGrpcStatus(job.status());
  v1::JobUpdate first;
  first.set_revision(job->revision());
  *first.mutable_job() = *job;
  if (!writer->Write(first)) return grpc::Status::OK;
  int64_t seen = job->revision();
  absl::Time last_progress = absl::Now();
  bool terminal = IsTerminal(job->state());
  while (!terminal && !ctx->IsCancelled()) {
    // Short waits so that a cancelled call or a server shutdown is noticed promptly.
    auto update = coordinator_->WaitForUpdate(req->job_id(), seen, std::min(interval, absl::Milliseconds(500)));
    if (!update.ok()) return rpc::ToGrpcStatus(update.status());
    auto& [current, events] = *update;
    terminal = IsTerminal(current.state());
    if (current.revision() == seen) continue;
    if (!events.empty()) {
      for (const auto& e : events) {
        v1::JobUpdate u;
        u.set_revision(e.revision());
        *u.mutable_job() = current;
        *u.mutable_event() = e;
        if (!writer->Write(u)) return grpc::Status::OK;
      }
      seen = current.revision();
      last_progress = absl::Now();
    } else if (absl::Now() - last_progress >= interval || terminal) {
      v1::JobUpdate u;
      u.set_revision(current.revision());
      *u.mutable_job() = current;
      if (!writer->Write(u)) return grpc::Status::OK;
      seen = current.revision();
      last_progress = absl::Now();
    } else {
      seen = current.revision();  // a progress update inside the interval: the next one carries it
    }
  }
  if (ctx->IsCancelled()) return {grpc::StatusCode::CANCELLED, "watch cancelled"};
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ListJobEvents(grpc::ServerContext* ctx, const v1::ListJobEventsRequest* req,
                                           v1::ListJobEventsResponse* resp) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kClient);
  auto r = coordinator_->ListEvents(req->job_id(), req->after_sequence());
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  for (auto& e : *r) *resp->add_events() = std::move(e);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ListCheckpoints(grpc::ServerContext* ctx, const v1::ListCheckpointsRequest* req,
                                             v1::ListCheckpointsResponse* resp) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kClient);
  auto r = coordinator_->ListCheckpoints(req->job_id());
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  for (auto& c : *r) *resp->add_checkpoints() = std::move(c);
  return grpc::Status::OK;
}

grpc::Status StreamCheckpoint(grpc::ServerContext* ctx, const v1::CheckpointInfo& info, const std::string& path,
                              int64_t offset, grpc::ServerWriter<v1::CheckpointChunk>* writer) {
  if (offset < 0 || offset > info.size_bytes()) {
    return {grpc::StatusCode::OUT_OF_RANGE,
            absl::StrCat("offset ", offset, " is outside the checkpoint (", info.size_bytes(), " bytes)")};
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return {grpc::StatusCode::DATA_LOSS, absl::StrCat("checkpoint file of step ", info.step(), " is missing")};
  in.seekg(offset);
  v1::CheckpointChunk first;
  *first.mutable_info() = info;
  first.set_offset(offset);
  if (!writer->Write(first)) return grpc::Status::OK;
  std::vector<char> buffer(rpc::kChunkBytes);
  int64_t position = offset;
  while (position < info.size_bytes()) {
    if (ctx->IsCancelled()) return {grpc::StatusCode::CANCELLED, "download cancelled"};
    const auto want = static_cast<std::streamsize>(std::min<int64_t>(buffer.size(), info.size_bytes() - position));
    in.read(buffer.data(), want);
    if (in.gcount() != want) {
      return {grpc::StatusCode::DATA_LOSS, absl::StrCat("checkpoint file of step ", info.step(), " is truncated")};
    }
    v1::CheckpointChunk chunk;
    chunk.set_offset(position);
    chunk.set_data(buffer.data(), static_cast<size_t>(want));
    if (!writer->Write(chunk)) return grpc::Status::OK;
    position += want;
  }
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::DownloadCheckpoint(grpc::ServerContext* ctx, const v1::DownloadCheckpointRequest* req,
                                                grpc::ServerWriter<v1::CheckpointChunk>* writer) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kClient);
  if (req->step() < 0) return {grpc::StatusCode::INVALID_ARGUMENT, "step: must be >= 0 (0: the newest)"};
  auto found = coordinator_->FindCheckpoint(req->job_id(), req->step());
  if (!found.ok()) return rpc::ToGrpcStatus(found.status());
  return StreamCheckpoint(ctx, found->first, found->second, req->offset(), writer);
}

grpc::Status JobServiceImpl::GetEvaluation(grpc::ServerContext* ctx, const v1::GetEvaluationRequest* req,
                                           v1::Evaluation* resp) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kClient);
  auto r = coordinator_->GetEvaluation(req->job_id());
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  *resp = *std::move(r);
  return grpc::Status::OK;
}

}  // namespace saegrid::coordinator
