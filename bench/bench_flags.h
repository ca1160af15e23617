// Command-line flags of the benchmarks: base/flags.h's parser ("--name value", every flag
// declared, errors name the flag); a bad flag ends the benchmark with exit code 2.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "base/flags.h"

namespace saegrid::bench {

inline void ParseFlagsOrExit(int argc, char** argv, const std::map<std::string, FlagSpec>& flags) {
  const absl::Status status = ParseFlags(argc - 1, argv + 1, flags);
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", argv[0], std::string(status.message()).c_str());
    std::exit(2);
  }
}

}  // namespace saegrid::bench
