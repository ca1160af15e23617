// The spelling of a training device, "cpu", "cuda" or "cuda:N", parsed in one place for the
// torch-free spec validator, the coordinator's placement and the engine (which then checks that
// the device exists).
#pragma once

#include <optional>
#include <string>

namespace saegrid {

struct DeviceName {
  std::string kind;  // "cpu" or "cuda"
  int index = -1;    // cuda:N; -1: the current device
};

// nullopt for anything else (an upper-case name, "cuda:", "cuda:-1", an index past 9999, ...).
std::optional<DeviceName> ParseDeviceName(const std::string& name);

}  // namespace saegrid
