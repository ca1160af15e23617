// Bearer tokens and TLS for every saegrid endpoint. Clients and workers hold different tokens:
// a worker token cannot call JobService and a client token cannot call WorkerService.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace saegrid::rpc {

enum class Role { kClient, kWorker };

// The secret from `file` when given (trailing whitespace dropped), else from the environment
// variable `env_var`; "" when neither is set. `what` names the secret in errors.
absl::StatusOr<std::string> ReadSecret(const std::string& file, const char* env_var, const std::string& what);

class TokenAuthenticator {
 public:
  // An empty token for a role leaves that role's API open (only with allow_unauthenticated).
  TokenAuthenticator(std::string client_token, std::string worker_token)
      : client_token_(std::move(client_token)), worker_token_(std::move(worker_token)) {}
  // OK, or UNAUTHENTICATED saying what is wrong (no header, wrong scheme, wrong token, a token of
  // the other role).
  grpc::Status Check(const grpc::ServerContext& context, Role role) const;

 private:
  std::string client_token_, worker_token_;
};

// In a service method: returns UNAUTHENTICATED unless the call carries `role`'s token.
#define SAEGRID_RETURN_IF_UNAUTHORIZED(authenticator, context, role)           \
  do {                                                                         \
    grpc::Status saegrid_auth_status = (authenticator).Check(*(context), role); \
    if (!saegrid_auth_status.ok()) return saegrid_auth_status;                 \
  } while (0)

// Adds "authorization: Bearer <token>" (nothing for an empty token).
void AttachToken(grpc::ClientContext* context, const std::string& token);

// TLS when cert and key files are given, else plaintext.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const std::string& cert_file,
                                                                                const std::string& key_file);
// TLS trusting `ca_file` when given, else plaintext.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const std::string& ca_file);

// Every saegrid message is small except checkpoint chunks (1 MiB); this bounds both ways.
constexpr int kMaxMessageBytes = 4 << 20;
// Bearer tokens shorter than this are refused at startup: a guessable token is no protection.
constexpr size_t kMinTokenLength = 16;
constexpr int kChunkBytes = 1 << 20;

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           const std::shared_ptr<grpc::ChannelCredentials>& credentials);

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace saegrid::rpc
