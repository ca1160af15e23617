#include "coordinator/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace saegrid::coordinator {
namespace {

absl::Status Sync(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  if (rc != 0) return absl::InternalError(absl::StrCat("fsync ", path, ": ", std::strerror(saved)));
  return absl::OkStatus();
}

}  // namespace

absl::Status CommitFile(const std::string& temp_path, const std::string& final_path) {
  if (auto st = Sync(temp_path, false); !st.ok()) return st;
  if (std::rename(temp_path.c_str(), final_path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("rename ", temp_path, " -> ", final_path, ": ", std::strerror(errno)));
  }
  return Sync(std::filesystem::path(final_path).parent_path().string(), true);
}

}  // namespace saegrid::coordinator
