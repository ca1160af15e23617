#include "metrics/rpc_metrics.h"

#include <chrono>
#include <string>

namespace saegrid::metrics {
namespace {

using grpc::experimental::InterceptionHookPoints;

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "OTHER";
  }
}

// Only the methods this server implements become label values, so a client calling made-up
// method names cannot grow the label set.
std::string MethodLabel(const char* method) {
  const std::string m = method ? method : "";
  if (m.rfind("/saegrid.v1.", 0) == 0 || m.rfind("/grpc.health.v1.", 0) == 0 ||
      m.rfind("/grpc.reflection.", 0) == 0) {
    return m.substr(1);
  }
  return "other";
}

class Interceptor final : public grpc::experimental::Interceptor {
 public:
  Interceptor(RpcMetrics* metrics, std::string method) : metrics_(metrics), method_(std::move(method)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      metrics_->Record(method_, methods->GetSendStatus().error_code(), seconds);
    }
    methods->Proceed();
  }

 private:
  RpcMetrics* metrics_;
  std::string method_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace

RpcMetrics::RpcMetrics(prometheus::Registry& registry)
    : requests_(prometheus::BuildCounter()
                    .Name("saegrid_rpc_requests_total")
                    .Help("RPCs handled, by method and status code")
                    .Register(registry)),
      duration_(prometheus::BuildHistogram()
                    .Name("saegrid_rpc_duration_seconds")
                    .Help("Time from the start of an RPC to its status, by method (streams: their lifetime)")
                    .Register(registry)) {}

grpc::experimental::Interceptor* RpcMetrics::CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) {
  return new Interceptor(this, MethodLabel(info->method()));
}

void RpcMetrics::Record(const std::string& method, grpc::StatusCode code, double seconds) {
  requests_.Add({{"method", method}, {"code", CodeName(code)}}).Increment();
  static const prometheus::Histogram::BucketBoundaries buckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                                  0.1,    0.25,  0.5,    1,     2.5,  5,     10};
  duration_.Add({{"method", method}}, buckets).Observe(seconds);
}

}  // namespace saegrid::metrics
