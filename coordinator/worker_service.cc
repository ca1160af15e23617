#include "coordinator/worker_service.h"

#include <atomic>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "coordinator/job_service.h"
#include "rpc/sha256.h"

namespace saegrid::coordinator {

grpc::Status WorkerServiceImpl::RegisterWorker(grpc::ServerContext* ctx, const v1::RegisterWorkerRequest* req,
                                               v1::RegisterWorkerResponse* resp) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kWorker);
  auto r = coordinator_->RegisterWorker(*req);
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Heartbeat(grpc::ServerContext* ctx,
                                          grpc::ServerReaderWriter<v1::WorkerCommands, v1::WorkerHeartbeat>* stream) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kWorker);
  v1::WorkerHeartbeat heartbeat;
  std::string worker_id, session;  // of the stream's first accepted heartbeat
  while (stream->Read(&heartbeat)) {
    if (!worker_id.empty() && (heartbeat.worker_id() != worker_id || heartbeat.session() != session)) {
      return {grpc::StatusCode::INVALID_ARGUMENT, "worker_id or session changed within one heartbeat stream"};
    }
    auto commands = coordinator_->Heartbeat(heartbeat);
    if (!commands.ok()) return rpc::ToGrpcStatus(commands.status());
    worker_id = heartbeat.worker_id();
    session = heartbeat.session();
    if (!stream->Write(*commands)) break;
  }
  if (!worker_id.empty()) coordinator_->WorkerStreamClosed(worker_id, session);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::ReportProgress(grpc::ServerContext* ctx, const v1::ReportProgressRequest* req,
                                               v1::ReportProgressResponse*) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kWorker);
  return rpc::ToGrpcStatus(coordinator_->ReportProgress(*req));
}

grpc::Status WorkerServiceImpl::UploadCheckpoint(grpc::ServerContext* ctx,
                                                 grpc::ServerReader<v1::UploadCheckpointChunk>* reader,
                                                 v1::UploadCheckpointResponse* resp) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kWorker);
  v1::UploadCheckpointChunk chunk;
  if (!reader->Read(&chunk) || !chunk.has_header()) {
    return {grpc::StatusCode::INVALID_ARGUMENT, "the first message of an upload must be its header"};
  }
  const v1::UploadCheckpointHeader header = chunk.header();
  if (auto st = coordinator_->CheckUpload(header); !st.ok()) return rpc::ToGrpcStatus(st);
  static std::atomic<int64_t> counter{0};
  const std::string temp = absl::StrCat(coordinator_->temp_dir(), "/upload-", header.job_id(), "-", header.step(),
                                        "-", counter++, ".part");
  struct RemoveOnExit {
    std::string path;
    ~RemoveOnExit() { std::remove(path.c_str()); }
  } cleanup{temp};
  std::ofstream out(temp, std::ios::binary | std::ios::trunc);
  if (!out) return {grpc::StatusCode::INTERNAL, "cannot create the upload file"};
  rpc::Sha256 hash;
  int64_t received = 0;
  while (reader->Read(&chunk)) {
    if (chunk.has_header()) return {grpc::StatusCode::INVALID_ARGUMENT, "a second header within one upload"};
    received += static_cast<int64_t>(chunk.data().size());
    if (received > header.size_bytes()) {
      return {grpc::StatusCode::INVALID_ARGUMENT,
              absl::StrCat("more data than header.size_bytes (", header.size_bytes(), ")")};
    }
    hash.Update(chunk.data());
    out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
  }
  out.close();
  if (!out) return {grpc::StatusCode::INTERNAL, "cannot write the upload file"};
  if (ctx->IsCancelled()) return {grpc::StatusCode::CANCELLED, "upload cancelled"};
  if (received != header.size_bytes()) {
    return {grpc::StatusCode::DATA_LOSS,
            absl::StrCat("received ", received, " bytes, header.size_bytes says ", header.size_bytes())};
  }
  if (const std::string digest = hash.HexDigest(); digest != header.sha256()) {
    return {grpc::StatusCode::DATA_LOSS, absl::StrCat("sha256 mismatch: received ", digest, ", header says ",
                                                      header.sha256())};
  }
  auto info = coordinator_->AddCheckpoint(header, temp);
  if (!info.ok()) return rpc::ToGrpcStatus(info.status());
  *resp->mutable_checkpoint() = *info;
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::FetchCheckpoint(grpc::ServerContext* ctx, const v1::FetchCheckpointRequest* req,
                                                grpc::ServerWriter<v1::CheckpointChunk>* writer) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kWorker);
  auto found = coordinator_->AuthorizeFetch(*req);
  if (!found.ok()) return rpc::ToGrpcStatus(found.status());
  return StreamCheckpoint(ctx, found->first, found->second, req->offset(), writer);
}

grpc::Status WorkerServiceImpl::ReportResult(grpc::ServerContext* ctx, const v1::ReportResultRequest* req,
                                             v1::ReportResultResponse*) {
  SAEGRID_RETURN_IF_UNAUTHORIZED(*auth_, ctx, rpc::Role::kWorker);
  return rpc::ToGrpcStatus(coordinator_->ReportResult(*req));
}

}  // namespace saegrid::coordinator
