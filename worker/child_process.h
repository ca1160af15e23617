// A training rank as a child process: its own process group, output to a log file, and killed
// with the worker if the worker dies (PDEATHSIG), so that a crash in training never takes the
// daemon down and a dead daemon leaves no orphan ranks.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace saegrid::worker {

// How a child ended: it exited with a code, or a signal killed it.
struct ExitStatus {
  bool signaled = false;
  int code = 0;    // the exit code when !signaled
  int signal = 0;  // the signal when signaled

  // The shell's number: the code, or 128 + the signal.
  int ShellCode() const { return signaled ? 128 + signal : code; }
  // "exit code 1" or "killed by signal SIGKILL".
  std::string Describe() const;
};

class ChildProcess {
 public:
  static absl::StatusOr<ChildProcess> Start(const std::vector<std::string>& argv, const std::string& log_path,
                                            const std::map<std::string, std::string>& env);
  // How it ended, once it has; nullopt while it runs.
  std::optional<ExitStatus> Poll();
  void Signal(int signal);
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::optional<ExitStatus> exit_;
};

}  // namespace saegrid::worker
