// Command-line flags of the benchmarks: `--name value` pairs, anywhere on the line.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>

namespace saegrid::bench {

inline std::string FlagValue(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (name == argv[i]) return argv[i + 1];
  }
  return fallback;
}

inline int64_t Flag(int argc, char** argv, const std::string& name, int64_t fallback) {
  return std::atoll(FlagValue(argc, argv, name, std::to_string(fallback)).c_str());
}

inline bool HasFlag(int argc, char** argv, const std::string& name) {
  for (int i = 1; i < argc; ++i) {
    if (name == argv[i]) return true;
  }
  return false;
}

}  // namespace saegrid::bench
