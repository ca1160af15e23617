// WorkerService over gRPC: authenticates the worker token and adapts calls onto the Coordinator;
// receives checkpoint uploads into the data directory, checking size and sha256.
#pragma once

#include "coordinator/coordinator.h"
#include "rpc/security.h"
#include "saegrid/v1/worker_service.grpc.pb.h"

namespace saegrid::coordinator {

class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  WorkerServiceImpl(Coordinator* coordinator, const rpc::TokenAuthenticator* auth)
      : coordinator_(coordinator), auth_(auth) {}

  grpc::Status RegisterWorker(grpc::ServerContext* ctx, const v1::RegisterWorkerRequest* req,
                              v1::RegisterWorkerResponse* resp) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx,
                         grpc::ServerReaderWriter<v1::WorkerCommands, v1::WorkerHeartbeat>* stream) override;
  grpc::Status ReportProgress(grpc::ServerContext* ctx, const v1::ReportProgressRequest* req,
                              v1::ReportProgressResponse* resp) override;
  grpc::Status UploadCheckpoint(grpc::ServerContext* ctx, grpc::ServerReader<v1::UploadCheckpointChunk>* reader,
                                v1::UploadCheckpointResponse* resp) override;
  grpc::Status FetchCheckpoint(grpc::ServerContext* ctx, const v1::FetchCheckpointRequest* req,
                               grpc::ServerWriter<v1::CheckpointChunk>* writer) override;
  grpc::Status ReportResult(grpc::ServerContext* ctx, const v1::ReportResultRequest* req,
                            v1::ReportResultResponse* resp) override;

 private:
  Coordinator* coordinator_;
  const rpc::TokenAuthenticator* auth_;
};

}  // namespace saegrid::coordinator
