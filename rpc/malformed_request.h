// A server interceptor that names malformed requests. gRPC answers a request whose bytes do not
// parse as the method's message with INTERNAL and an empty message, which reads like a server
// bug; this turns exactly that answer into INVALID_ARGUMENT saying what was wrong. The services
// never return INTERNAL without a message themselves.
#pragma once

#include <grpcpp/support/server_interceptor.h>

namespace saegrid::rpc {

class MalformedRequestInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;
};

}  // namespace saegrid::rpc
