#include "rpc/command_line.h"

#include <pthread.h>

#include "base/durable_file.h"

namespace saegrid::rpc {

absl::Status WriteFileAtomically(const std::string& path, const std::string& contents) {
  return WriteFileDurably(path, contents);
}

sigset_t BlockTerminationSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

}  // namespace saegrid::rpc
