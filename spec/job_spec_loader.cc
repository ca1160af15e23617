#include "spec/job_spec_loader.h"

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace saegrid {
namespace {

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

absl::StatusOr<nlohmann::json> YamlToJson(const YAML::Node& node, const std::string& path) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return nlohmann::json(nullptr);
    case YAML::NodeType::Scalar: return ScalarToJson(node);
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (size_t i = 0; i < node.size(); ++i) {
        auto item = YamlToJson(node[i], absl::StrCat(path, "[", i, "]"));
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
        auto value = YamlToJson(kv.second, child);
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
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid YAML/JSON: ", e.what()));
  }
  if (!root.IsMap()) return absl::InvalidArgumentError(source + ": the top level must be a mapping");
  auto json = YamlToJson(root, "");
  if (!json.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", json.status().message()));
  v1::JobSpec spec;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(json->dump(), &spec, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", RewriteProtoError(std::string(status.message()))));
  }
  return spec;
}

absl::StatusOr<v1::JobSpec> LoadJobSpecFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("config file " + path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseJobSpec(ss.str(), path);
}

}  // namespace saegrid
