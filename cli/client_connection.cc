#include "cli/client_connection.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "rpc/security.h"

namespace saegrid::cli {

const char kConnectionFlagsHelp[] =
    "  --coordinator HOST:PORT  (or SAEGRID_COORDINATOR; default 127.0.0.1:50051)\n"
    "  --token-file FILE        client bearer token (or SAEGRID_CLIENT_TOKEN)\n"
    "  --tls-ca FILE            talk TLS, trusting this CA\n"
    "  --json                   machine-readable output (one JSON object per line)\n";

void ClientConnection::AddFlags(std::map<std::string, FlagSpec>* flags) {
  (*flags)["--coordinator"] = FlagSpec::String(&coordinator);
  (*flags)["--token-file"] = FlagSpec::String(&token_file);
  (*flags)["--tls-ca"] = FlagSpec::String(&tls_ca);
  (*flags)["--json"] = FlagSpec::Switch(&json);
}

absl::Status ClientConnection::Connect() {
  if (coordinator.empty()) {
    if (const char* env = std::getenv("SAEGRID_COORDINATOR"); env != nullptr && *env) coordinator = env;
  }
  if (coordinator.empty()) coordinator = "127.0.0.1:50051";
  auto secret = rpc::ReadSecret(token_file, "SAEGRID_CLIENT_TOKEN", "--token-file");
  if (!secret.ok()) return secret.status();
  token = *secret;
  auto credentials = rpc::MakeChannelCredentials(tls_ca);
  if (!credentials.ok()) return credentials.status();
  stub = v1::JobService::NewStub(rpc::MakeChannel(coordinator, *credentials));
  return absl::OkStatus();
}

std::unique_ptr<grpc::ClientContext> ClientConnection::Context(int deadline_seconds) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  rpc::AttachToken(ctx.get(), token);
  if (deadline_seconds > 0) ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(deadline_seconds));
  return ctx;
}

int ReportRpcError(const std::string& command, const grpc::Status& status) {
  absl::FPrintF(stderr, "saegrid %s: %s\n", command,
                status.error_message().empty() ? absl::StrCat("error code ", status.error_code())
                                               : status.error_message());
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED: return kExitUnavailable;
    case grpc::StatusCode::NOT_FOUND: return kExitNotFound;
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED: return kExitUnauthenticated;
    case grpc::StatusCode::DATA_LOSS: return kExitDataLoss;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return kExitUsage;
    default: return kExitOther;
  }
}

}  // namespace saegrid::cli
