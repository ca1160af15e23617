#include "base/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace saegrid {
namespace {

absl::Status ErrnoError(const char* what, const std::string& path, int error) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(error)));
}

absl::Status SyncPath(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path, errno);
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError("cannot fsync", path, saved);
  return absl::OkStatus();
}

std::string DirectoryOf(const std::string& path) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

}  // namespace

absl::Status CommitFile(const std::string& temp_path, const std::string& final_path) {
  if (auto st = SyncPath(temp_path, false); !st.ok()) return st;
  if (std::rename(temp_path.c_str(), final_path.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", temp_path, " -> ", final_path, ": ", std::strerror(errno)));
  }
  return SyncPath(DirectoryOf(final_path), true);
}

absl::Status WriteFileDurably(const std::string& path, const std::string& contents) {
  // The pid keeps two writers of one path (two daemons given the same port file) apart.
  const std::string temp = absl::StrCat(path, ".tmp.", ::getpid());
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", temp, errno);
  const char* data = contents.data();
  size_t left = contents.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, data, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int saved = errno;
      ::close(fd);
      ::unlink(temp.c_str());
      return ErrnoError("cannot write", temp, saved);
    }
    data += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int saved = errno;
    ::close(fd);
    ::unlink(temp.c_str());
    return ErrnoError("cannot fsync", temp, saved);
  }
  if (::close(fd) != 0) {
    const int saved = errno;
    ::unlink(temp.c_str());
    return ErrnoError("cannot close", temp, saved);
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const int saved = errno;
    ::unlink(temp.c_str());
    return absl::InternalError(absl::StrCat("cannot rename ", temp, " -> ", path, ": ", std::strerror(saved)));
  }
  return SyncPath(DirectoryOf(path), true);
}

}  // namespace saegrid
