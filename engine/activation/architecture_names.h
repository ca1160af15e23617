// The config names of the SAE architectures, in one place for the job spec, the checkpoint
// formats and the CLI. Header-only and free of LibTorch, so the parsers of formats/ can use it.
#pragma once

#include <array>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <string_view>

#include "engine/config.h"

namespace saegrid {

inline constexpr std::array<std::pair<const char*, Architecture>, 5> kArchitectureNames = {{
    {"topk", Architecture::kTopK},
    {"batchtopk", Architecture::kBatchTopK},
    {"jumprelu", Architecture::kJumpReLU},
    {"matryoshka", Architecture::kMatryoshka},
    {"relu", Architecture::kReLU},
}};

// A C string, which every string API (std, absl, protobuf) takes.
inline const char* ArchitectureName(Architecture a) {
  for (const auto& [name, value] : kArchitectureNames) {
    if (value == a) return name;
  }
  return "topk";
}

inline std::optional<Architecture> ParseArchitecture(std::string_view name) {
  for (const auto& [n, value] : kArchitectureNames) {
    if (std::string_view(n) == name) return value;
  }
  return std::nullopt;
}

// "topk", "batchtopk", ... as one string for error messages.
inline std::string ArchitectureChoices() {
  std::string out;
  for (const auto& [name, value] : kArchitectureNames) {
    if (!out.empty()) out += ", ";
    out += "\"" + std::string(name) + "\"";
  }
  return out;
}

// Whether k (and the k schedule) applies.
inline bool ArchitectureUsesK(Architecture a) {
  return a == Architecture::kTopK || a == Architecture::kBatchTopK || a == Architecture::kMatryoshka;
}

// The architecture and the setting that sets its sparsity, for banners and plot legends:
// "topk k=32", "batchtopk k=32", "matryoshka k=32", "jumprelu l0=0.001", "relu l1=0.001".
inline std::string SparsityLabel(const ModelConfig& m) {
  std::ostringstream out;
  out << ArchitectureName(m.architecture);
  if (ArchitectureUsesK(m.architecture)) {
    out << " k=" << m.k;
  } else if (m.architecture == Architecture::kJumpReLU) {
    out << (m.target_l0 > 0 ? " target_l0=" : " l0=") << (m.target_l0 > 0 ? m.target_l0 : m.l0_coefficient);
  } else {
    out << " l1=" << m.l1_coefficient;
  }
  return out.str();
}

}  // namespace saegrid
