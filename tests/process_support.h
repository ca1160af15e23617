// Files, temporary directories and child processes for tests; no LibTorch, so that the service
// tests compile quickly.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace saegrid::testing {

// A fresh directory under the system temp dir, removed when the object goes away.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

void WriteFile(const std::string& path, const std::string& contents);
std::string ReadFile(const std::string& path);

// Child processes for the multi-process tests: `argv[0]` is a path; stdout and stderr go to
// `log`. Wait returns the exit code (128 + signal when killed), or nothing when `timeout_s`
// passed first (the child is then killed, so nothing outlives a test).
pid_t StartProcess(const std::vector<std::string>& argv, const std::string& log);
std::optional<int> WaitProcess(pid_t pid, double timeout_s);
int RunProcess(const std::vector<std::string>& argv, const std::string& log, double timeout_s);

// The lines of a file.
std::vector<std::string> ReadLines(const std::string& path);

}  // namespace saegrid::testing
