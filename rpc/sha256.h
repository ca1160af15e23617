// SHA-256 of checkpoint archives (OpenSSL's libcrypto, which gRPC already links).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace saegrid::rpc {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  void Update(absl::string_view data);
  std::string HexDigest();  // finishes the hash

 private:
  struct State;
  std::unique_ptr<State> state_;
};

absl::StatusOr<std::string> Sha256OfFile(const std::string& path);

}  // namespace saegrid::rpc
