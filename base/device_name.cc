#include "base/device_name.h"

#include <cctype>

namespace saegrid {

std::optional<DeviceName> ParseDeviceName(const std::string& name) {
  if (name == "cpu" || name == "cuda") return DeviceName{name, -1};
  const std::string prefix = "cuda:";
  if (name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  const std::string digits = name.substr(prefix.size());
  if (digits.empty() || digits.size() > 4) return std::nullopt;
  int index = 0;
  for (char c : digits) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
    index = index * 10 + (c - '0');
  }
  return DeviceName{"cuda", index};
}

}  // namespace saegrid
