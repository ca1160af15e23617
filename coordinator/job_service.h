// JobService over gRPC: authenticates the client token and adapts calls onto the Coordinator.
#pragma once

#include "coordinator/coordinator.h"
#include "rpc/security.h"
#include "saegrid/v1/job_service.grpc.pb.h"

namespace saegrid::coordinator {

class JobServiceImpl final : public v1::JobService::Service {
 public:
  JobServiceImpl(Coordinator* coordinator, const rpc::TokenAuthenticator* auth)
      : coordinator_(coordinator), auth_(auth) {}

  grpc::Status SubmitJob(grpc::ServerContext* ctx, const v1::SubmitJobRequest* req, v1::SubmitJobResponse* resp) override;
  grpc::Status GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::Job* resp) override;
  grpc::Status ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req, v1::ListJobsResponse* resp) override;
  grpc::Status CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req, v1::Job* resp) override;
  grpc::Status WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::JobUpdate>* writer) override;
  grpc::Status ListJobEvents(grpc::ServerContext* ctx, const v1::ListJobEventsRequest* req,
                             v1::ListJobEventsResponse* resp) override;
  grpc::Status ListCheckpoints(grpc::ServerContext* ctx, const v1::ListCheckpointsRequest* req,
                               v1::ListCheckpointsResponse* resp) override;
  grpc::Status DownloadCheckpoint(grpc::ServerContext* ctx, const v1::DownloadCheckpointRequest* req,
                                  grpc::ServerWriter<v1::CheckpointChunk>* writer) override;
  grpc::Status GetEvaluation(grpc::ServerContext* ctx, const v1::GetEvaluationRequest* req,
                             v1::Evaluation* resp) override;

 private:
  Coordinator* coordinator_;
  const rpc::TokenAuthenticator* auth_;
};

// Streams a stored checkpoint archive from `offset` (shared with WorkerService.FetchCheckpoint).
grpc::Status StreamCheckpoint(grpc::ServerContext* ctx, const v1::CheckpointInfo& info, const std::string& path,
                              int64_t offset, grpc::ServerWriter<v1::CheckpointChunk>* writer);

}  // namespace saegrid::coordinator
