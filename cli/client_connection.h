// What every service command of the `saegrid` client shares: the coordinator address, token,
// TLS, output mode, and how RPC failures become messages and exit codes.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "base/flags.h"
#include "saegrid/v1/job_service.grpc.pb.h"

namespace saegrid::cli {

// Exit codes of the service commands (documented in `saegrid --help`).
enum ExitCode {
  kExitOk = 0,
  kExitJobFailed = 1,      // the job ended FAILED (submit --wait, watch)
  kExitUsage = 2,          // bad arguments, or the coordinator rejected the request's content
  kExitUnavailable = 3,    // coordinator unreachable or timed out
  kExitNotFound = 4,       // no such job / checkpoint / evaluation
  kExitUnauthenticated = 5,
  kExitDataLoss = 6,       // a download did not match its sha256
  kExitJobCancelled = 7,   // the job ended CANCELLED
  kExitOther = 8,
};

struct ClientConnection {
  std::string coordinator;  // --coordinator or SAEGRID_COORDINATOR, default 127.0.0.1:50051
  std::string token_file;   // --token-file
  std::string token;        // read from token_file, else SAEGRID_CLIENT_TOKEN
  std::string tls_ca;       // --tls-ca
  bool json = false;        // --json
  std::unique_ptr<v1::JobService::Stub> stub;

  // Adds the common flags (filling this object) to a command's own, to parse them together.
  void AddFlags(std::map<std::string, FlagSpec>* flags);
  // Reads the token and connects; after the flags are parsed.
  absl::Status Connect();
  // A context with the token and a deadline (none for streams: 0).
  std::unique_ptr<grpc::ClientContext> Context(int deadline_seconds = 30) const;
};

// Prints "saegrid <command>: <message>" and returns the exit code for the status.
int ReportRpcError(const std::string& command, const grpc::Status& status);

extern const char kConnectionFlagsHelp[];

}  // namespace saegrid::cli
