// The benchmarks measure each configuration in a fresh child process of their own binary, so
// that its peak memory is its own and a configuration that fails (out of memory) does not end
// the others.
#pragma once

#include <unistd.h>

#include <array>
#include <cstdio>
#include <string>

#include "nlohmann/json.hpp"

namespace saegrid::bench {

// Runs this binary again with `args` and parses the JSON it prints; {"error": ...} when it cannot
// start, fails or prints something else.
inline nlohmann::json RunSelf(const std::string& args) {
  // Resolved here: inside popen's shell, /proc/self/exe would be the shell.
  std::array<char, 4096> self{};
  const ssize_t length = readlink("/proc/self/exe", self.data(), self.size() - 1);
  if (length <= 0) return {{"error", "cannot resolve /proc/self/exe"}};
  const std::string command = std::string(self.data(), length) + " " + args;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return {{"error", "cannot start " + command}};
  std::string output;
  std::array<char, 4096> buffer;
  size_t got;
  while ((got = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), got);
  const int status = pclose(pipe);
  nlohmann::json parsed = nlohmann::json::parse(output, nullptr, /*allow_exceptions=*/false);
  if (status != 0 || parsed.is_discarded()) {
    return {{"error", command + " failed with status " + std::to_string(status)}};
  }
  return parsed;
}

}  // namespace saegrid::bench
