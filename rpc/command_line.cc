#include "rpc/command_line.h"

#include <pthread.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace saegrid::rpc {

absl::Status ParseFlags(int argc, char** argv, const std::map<std::string, FlagSpec>& flags,
                        std::vector<std::string>* positional) {
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i], value;
    bool has_value = false;
    if (arg.rfind("--", 0) != 0) {
      if (positional == nullptr) return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
      positional->push_back(arg);
      continue;
    }
    if (auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    auto it = flags.find(arg);
    if (it == flags.end()) return absl::InvalidArgumentError(absl::StrCat("unknown flag ", arg));
    if (it->second.present != nullptr) {
      if (has_value) return absl::InvalidArgumentError(absl::StrCat(arg, " takes no value"));
      *it->second.present = true;
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat(arg, " needs a value"));
      value = argv[++i];
    }
    *it->second.value = value;
  }
  return absl::OkStatus();
}

void WriteFileAtomically(const std::string& path, const std::string& contents) {
  const std::string temp = path + ".tmp";
  std::ofstream(temp) << contents;
  std::rename(temp.c_str(), path.c_str());
}

sigset_t BlockTerminationSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

absl::Status ParseSeconds(const std::string& flag, const std::string& text, double* seconds) {
  if (!absl::SimpleAtod(text, seconds) || !(*seconds > 0) || *seconds > 86400 * 7) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": expected seconds in (0, 604800], got '", text, "'"));
  }
  return absl::OkStatus();
}

}  // namespace saegrid::rpc
