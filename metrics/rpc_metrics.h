// Counts and times every RPC a server handles, by method and status code: a gRPC server
// interceptor feeding saegrid_rpc_requests_total and saegrid_rpc_duration_seconds.
#pragma once

#include <grpcpp/support/server_interceptor.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace saegrid::metrics {

class RpcMetrics final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcMetrics(prometheus::Registry& registry);
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

  void Record(const std::string& method, grpc::StatusCode code, double seconds);

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& duration_;
};

}  // namespace saegrid::metrics
