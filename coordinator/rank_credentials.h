// Attempt-scoped credentials. Every rank of every attempt gets its own secret with its
// assignment, and every call made for that rank (progress, uploads, fetches, results) must carry
// it: the shared worker token says "some worker", the credential says "rank r of attempt a".
//
// A credential is HMAC-SHA256(key, attempt_id "/" rank) under a random key kept in the data
// directory (created on first start, mode 0600), so credentials survive coordinator restarts
// without being stored next to the jobs that clients can read.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace saegrid::coordinator {

class RankCredentials {
 public:
  // Reads `key_path`, or creates it durably with a fresh random key. Errors name the file.
  static absl::StatusOr<std::unique_ptr<RankCredentials>> Open(const std::string& key_path);

  std::string Issue(const std::string& attempt_id, int rank) const;
  // Constant-time comparison against Issue(attempt_id, rank).
  bool Verify(const std::string& attempt_id, int rank, const std::string& credential) const;

 private:
  explicit RankCredentials(std::string key) : key_(std::move(key)) {}
  std::string key_;
};

// A fresh random token of 32 hex digits (worker sessions).
std::string RandomToken();

}  // namespace saegrid::coordinator
