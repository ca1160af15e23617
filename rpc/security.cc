#include "rpc/security.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace saegrid::rpc {
namespace {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(what, ": cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Compares without an early exit, so that timing does not reveal a token's prefix.
bool SameSecret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
  return diff == 0 && !b.empty();
}

}  // namespace

absl::StatusOr<std::string> ReadSecret(const std::string& file, const char* env_var, const std::string& what) {
  if (!file.empty()) {
    auto text = ReadWholeFile(file, what);
    if (!text.ok()) return text.status();
    std::string token(absl::StripTrailingAsciiWhitespace(*text));
    if (token.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", file, " is empty"));
    return token;
  }
  if (const char* env = std::getenv(env_var); env != nullptr) return std::string(absl::StripAsciiWhitespace(env));
  return std::string();
}

grpc::Status TokenAuthenticator::Check(const grpc::ServerContext& context, Role role) const {
  const std::string& expected = role == Role::kClient ? client_token_ : worker_token_;
  const std::string& other = role == Role::kClient ? worker_token_ : client_token_;
  if (expected.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return {grpc::StatusCode::UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata"};
  }
  const std::string value(it->second.data(), it->second.size());
  if (!absl::StartsWithIgnoreCase(value, "Bearer ")) {
    return {grpc::StatusCode::UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'"};
  }
  const std::string token = value.substr(7);
  if (SameSecret(token, expected)) return grpc::Status::OK;
  if (SameSecret(token, other)) {
    return {grpc::StatusCode::UNAUTHENTICATED,
            role == Role::kClient ? "a worker token cannot call the client API (JobService)"
                                  : "a client token cannot call the worker API (WorkerService)"};
  }
  return {grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token"};
}

void AttachToken(grpc::ClientContext* context, const std::string& token) {
  if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const std::string& cert_file,
                                                                                const std::string& key_file) {
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (cert_file.empty()) return grpc::InsecureServerCredentials();
  auto cert = ReadWholeFile(cert_file, "--tls-cert");
  if (!cert.ok()) return cert.status();
  auto key = ReadWholeFile(key_file, "--tls-key");
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const std::string& ca_file) {
  if (ca_file.empty()) return grpc::InsecureChannelCredentials();
  auto ca = ReadWholeFile(ca_file, "--tls-ca");
  if (!ca.ok()) return ca.status();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = *ca;
  return grpc::SslCredentials(options);
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           const std::shared_ptr<grpc::ChannelCredentials>& credentials) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Reconnect quickly after a coordinator restart (the default backoff grows to 2 minutes).
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  return grpc::CreateCustomChannel(address, credentials, args);
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return {static_cast<grpc::StatusCode>(status.code()), std::string(status.message())};
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace saegrid::rpc
