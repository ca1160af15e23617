#include "spec/job_spec_loader.h"

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <sys/stat.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace saegrid {
namespace {

// The offset of the first byte that is not part of well-formed UTF-8 (no overlong forms, no
// surrogates, nothing above U+10FFFF), or -1. yaml-cpp passes any bytes through, and the JSON
// step that follows refuses (throws on) text that is not UTF-8.
int64_t FirstInvalidUtf8(const std::string& text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    size_t len = 0;
    unsigned lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else {
      return static_cast<int64_t>(i);
    }
    if (i + len > n || p[i + 1] < lo || p[i + 1] > hi) return static_cast<int64_t>(i);
    for (size_t k = 2; k < len; ++k) {
      if (p[i + k] < 0x80 || p[i + k] > 0xbf) return static_cast<int64_t>(i);
    }
    i += len;
  }
  return -1;
}

// YAML scalars are untyped text; plain (unquoted) scalars that read as numbers, booleans or null
// become those JSON types, quoted ones stay strings. The proto parser then checks types.
nlohmann::json ScalarToJson(const YAML::Node& node) {
  const std::string& text = node.Scalar();
  if (node.Tag() == "!") return text;  // quoted
  if (text == "null" || text == "~" || text.empty()) return nullptr;
  if (text == "true" || text == "True") return true;
  if (text == "false" || text == "False") return false;
  int64_t i;
  if (absl::SimpleAtoi(text, &i)) return i;
  double d;
  if (absl::SimpleAtod(text, &d) && text.find_first_of("0123456789") != std::string::npos) return d;
  return text;
}

// The conversion counts every node it produces (`*nodes`), aliases included, and stops at the
// bounds: yaml-cpp shares an aliased node rather than copying it, so the exponential blow-up of an
// alias bomb would happen here.
absl::StatusOr<nlohmann::json> YamlToJson(const YAML::Node& node, const std::string& path, int depth,
                                          int64_t* nodes) {
  if (++*nodes > kMaxJobSpecNodes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the document expands to more than ", kMaxJobSpecNodes,
        " nodes (YAML aliases that repeat aliases?); a job specification has a few hundred"));
  }
  if (depth > kMaxJobSpecDepth) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": nested more than ", kMaxJobSpecDepth, " levels deep"));
  }
  switch (node.Type()) {
    case YAML::NodeType::Null: return nlohmann::json(nullptr);
    case YAML::NodeType::Scalar: return ScalarToJson(node);
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (size_t i = 0; i < node.size(); ++i) {
        auto item = YamlToJson(node[i], absl::StrCat(path, "[", i, "]"), depth + 1, nodes);
        if (!item.ok()) return item.status();
        out.push_back(*item);
      }
      return out;
    }
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& kv : node) {
        if (!kv.first.IsScalar()) return absl::InvalidArgumentError(path + ": keys must be plain names");
        const std::string key = kv.first.Scalar();
        const std::string child = path.empty() ? key : path + "." + key;
        if (out.contains(key)) return absl::InvalidArgumentError(child + ": field given twice");
        auto value = YamlToJson(kv.second, child, depth + 1, nodes);
        if (!value.ok()) return value.status();
        out[key] = *value;
      }
      return out;
    }
    default: return absl::InvalidArgumentError(path + ": unsupported YAML node");
  }
}

// Protobuf reports "(model) kk: Cannot find field." and "(model.k): invalid value ..."; say the
// same with one dotted path.
std::string RewriteProtoError(const std::string& message) {
  static const std::regex unknown(R"(^\(([^)]*)\) ([^:]+): Cannot find field\.?)");
  static const std::regex top_level_unknown(R"(^([^(:]+): Cannot find field\.?)");
  static const std::regex at_path(R"(^\(([^)]*)\):? ?(.*)$)");
  std::smatch m;
  if (std::regex_search(message, m, top_level_unknown)) return m[1].str() + ": unknown field";
  if (std::regex_search(message, m, unknown)) {
    const std::string parent = m[1].str();
    return (parent.empty() ? "" : parent + ".") + m[2].str() + ": unknown field";
  }
  if (std::regex_search(message, m, at_path)) return m[1].str() + ": " + m[2].str();
  return message;
}

}  // namespace

absl::StatusOr<v1::JobSpec> ParseJobSpec(const std::string& text, const std::string& source) {
  if (static_cast<int64_t>(text.size()) > kMaxJobSpecBytes) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", text.size(), " bytes, more than the ",
                                                   kMaxJobSpecBytes, "-byte limit of a job specification"));
  }
  if (const int64_t bad = FirstInvalidUtf8(text); bad >= 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not UTF-8 text (byte ", bad, " is not valid UTF-8)"));
  }
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid YAML/JSON: ", e.what()));
  }
  if (!root.IsMap()) return absl::InvalidArgumentError(source + ": the top level must be a mapping");
  int64_t nodes = 0;
  auto json = YamlToJson(root, "", 0, &nodes);
  if (!json.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", json.status().message()));
  v1::JobSpec spec;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  std::string json_text;
  try {
    json_text = json->dump();
  } catch (const nlohmann::json::exception&) {
    // An escape such as "\ud800" can decode to a string that is not UTF-8.
    return absl::InvalidArgumentError(absl::StrCat(source, ": a string is not valid UTF-8 once unescaped"));
  }
  const auto status = google::protobuf::util::JsonStringToMessage(json_text, &spec, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", RewriteProtoError(std::string(status.message()))));
  }
  return spec;
}

absl::StatusOr<v1::JobSpec> LoadJobSpecFile(const std::string& path) {
  // Checked before opening: a FIFO would block the open, and /dev/zero would never end.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return absl::NotFoundError("config file " + path + ": cannot open");
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError("config file " + path + ": not a regular file");
  if (st.st_size > kMaxJobSpecBytes) {
    return absl::InvalidArgumentError(absl::StrCat("config file ", path, ": ", st.st_size, " bytes, more than the ",
                                                   kMaxJobSpecBytes, "-byte limit of a job specification"));
  }
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("config file " + path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseJobSpec(ss.str(), path);
}

}  // namespace saegrid
