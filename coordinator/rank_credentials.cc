#include "coordinator/rank_credentials.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/durable_file.h"

namespace saegrid::coordinator {
namespace {

constexpr size_t kKeyBytes = 32;

std::string RandomBytes(size_t n) {
  std::string bytes(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()), static_cast<int>(n)) != 1) {
    // OpenSSL's generator failing means the process cannot make secrets at all.
    std::fprintf(stderr, "saegrid-coordinator: RAND_bytes failed\n");
    std::abort();
  }
  return bytes;
}

}  // namespace

std::string RandomToken() { return absl::BytesToHexString(RandomBytes(16)); }

absl::StatusOr<std::unique_ptr<RankCredentials>> RankCredentials::Open(const std::string& key_path) {
  std::ifstream in(key_path, std::ios::binary);
  if (in) {
    std::stringstream ss;
    ss << in.rdbuf();
    std::string key = ss.str();
    if (key.size() != kKeyBytes) {
      return absl::DataLossError(absl::StrCat(key_path, ": expected a ", kKeyBytes, "-byte key, found ", key.size(),
                                              " bytes (delete it to issue new credentials; running ranks then fail "
                                              "their next report and restart)"));
    }
    return std::unique_ptr<RankCredentials>(new RankCredentials(std::move(key)));
  }
  std::string key = RandomBytes(kKeyBytes);
  const mode_t old_mask = umask(077);  // the key file is readable by its owner only
  absl::Status written = WriteFileDurably(key_path, key);
  umask(old_mask);
  if (!written.ok()) return written;
  return std::unique_ptr<RankCredentials>(new RankCredentials(std::move(key)));
}

std::string RankCredentials::Issue(const std::string& attempt_id, int rank) const {
  const std::string message = absl::StrCat(attempt_id, "/", rank);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()), reinterpret_cast<const unsigned char*>(message.data()),
       message.size(), digest, &length);
  return absl::BytesToHexString(std::string(reinterpret_cast<char*>(digest), length));
}

bool RankCredentials::Verify(const std::string& attempt_id, int rank, const std::string& credential) const {
  const std::string expected = Issue(attempt_id, rank);
  return credential.size() == expected.size() &&
         CRYPTO_memcmp(credential.data(), expected.data(), expected.size()) == 0;
}

}  // namespace saegrid::coordinator
