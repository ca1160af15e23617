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

class ChildProcess {
 public:
  static absl::StatusOr<ChildProcess> Start(const std::vector<std::string>& argv, const std::string& log_path,
                                            const std::map<std::string, std::string>& env);
  // The exit code once it has ended (128 + signal when killed); nullopt while it runs.
  std::optional<int> Poll();
  void Signal(int signal);
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

}  // namespace saegrid::worker
