#include "engine/lm/hf_checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace saegrid {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be read"));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  return j;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HfCheckpoint>> HfCheckpoint::Open(const std::string& dir) {
  std::unique_ptr<HfCheckpoint> c(new HfCheckpoint());
  c->dir_ = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  auto config = ReadJson((fs::path(dir) / "config.json").string());
  if (!config.ok()) return config.status();
  c->config_ = *std::move(config);
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> shards;
  if (fs::exists(single, ec)) {
    shards.push_back(single.string());
  } else if (fs::exists(index, ec)) {
    auto map = ReadJson(index.string());
    if (!map.ok()) return map.status();
    const auto it = map->find("weight_map");
    if (it == map->end() || !it->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), ": no \"weight_map\" object"));
    }
    std::set<std::string> files;
    for (const auto& [name, file] : it->items()) {
      if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(index.string(), ": weight_map[\"", name, "\"] is not a file name"));
      }
      files.insert(file.get<std::string>());
    }
    for (const auto& f : files) shards.push_back((fs::path(dir) / f).string());
  } else {
    return absl::NotFoundError(absl::StrCat("model directory ", dir,
                                            " has neither model.safetensors nor model.safetensors.index.json"));
  }
  for (const auto& path : shards) {
    auto file = SafetensorsFile::Open(path);
    if (!file.ok()) return file.status();
    c->files_.push_back(std::make_unique<SafetensorsFile>(*std::move(file)));
    for (const auto& entry : c->files_.back()->entries()) c->file_of_[entry.name] = c->files_.size() - 1;
  }
  return c;
}

std::string HfCheckpoint::model_type() const {
  const auto it = config_.find("model_type");
  return it != config_.end() && it->is_string() ? it->get<std::string>() : "";
}

absl::StatusOr<int64_t> HfCheckpoint::ConfigInt(const std::string& key, std::optional<int64_t> fallback) const {
  const auto it = config_.find(key);
  if (it == config_.end() || it->is_null()) {
    if (fallback) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat(dir_, "/config.json: \"", key, "\" is required"));
  }
  if (!it->is_number_integer() || it->get<int64_t>() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(dir_, "/config.json: \"", key, "\" must be a non-negative integer"));
  }
  return it->get<int64_t>();
}

absl::StatusOr<double> HfCheckpoint::ConfigNumber(const std::string& key, std::optional<double> fallback) const {
  const auto it = config_.find(key);
  if (it == config_.end() || it->is_null()) {
    if (fallback) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat(dir_, "/config.json: \"", key, "\" is required"));
  }
  if (!it->is_number()) return absl::InvalidArgumentError(absl::StrCat(dir_, "/config.json: \"", key, "\" must be a number"));
  return it->get<double>();
}

absl::StatusOr<std::string> HfCheckpoint::ConfigString(const std::string& key, const std::string& fallback) const {
  const auto it = config_.find(key);
  if (it == config_.end() || it->is_null()) return fallback;
  if (!it->is_string()) return absl::InvalidArgumentError(absl::StrCat(dir_, "/config.json: \"", key, "\" must be a string"));
  return it->get<std::string>();
}

absl::StatusOr<bool> HfCheckpoint::ConfigBool(const std::string& key, bool fallback) const {
  const auto it = config_.find(key);
  if (it == config_.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return absl::InvalidArgumentError(absl::StrCat(dir_, "/config.json: \"", key, "\" must be true or false"));
  return it->get<bool>();
}

bool HfCheckpoint::Has(const std::string& name, const std::vector<std::string>& prefixes) const {
  if (file_of_.count(name)) return true;
  for (const auto& p : prefixes) {
    if (file_of_.count(p + name)) return true;
  }
  return false;
}

absl::StatusOr<torch::Tensor> HfCheckpoint::Tensor(const std::string& name, const std::vector<std::string>& prefixes,
                                                   const std::vector<int64_t>& shape, const TensorInit& init) const {
  std::string found;
  if (file_of_.count(name)) {
    found = name;
  } else {
    for (const auto& p : prefixes) {
      if (file_of_.count(p + name)) {
        found = p + name;
        break;
      }
    }
  }
  if (found.empty()) {
    return absl::NotFoundError(absl::StrCat("model ", dir_, ": tensor \"", name, "\" is missing"));
  }
  const SafetensorsFile& file = *files_[file_of_.at(found)];
  auto tensor = file.Get(found);
  if (!tensor.ok()) return tensor.status();
  if (tensor->sizes() != c10::IntArrayRef(shape)) {
    return absl::InvalidArgumentError(absl::StrCat("model ", dir_, ": tensor \"", found, "\" in ", file.path(), " is [",
                                                   absl::StrJoin(tensor->sizes(), ", "), "], the config wants [",
                                                   absl::StrJoin(shape, ", "), "]"));
  }
  if (!tensor->is_floating_point()) {
    return absl::InvalidArgumentError(absl::StrCat("model ", dir_, ": tensor \"", found, "\" is not floating point"));
  }
  if (!random_.enabled || (init.embedding && !random_.embeddings_too)) return tensor->to(torch::kFloat);
  switch (init.kind) {
    case TensorInit::Kind::kOnes:
      return torch::ones(shape, torch::kFloat);
    case TensorInit::Kind::kZeros:
      return torch::zeros(shape, torch::kFloat);
    case TensorInit::Kind::kNormal:
      break;
  }
  // FNV-1a of the name: a seed per tensor that does not depend on the platform's std::hash.
  uint64_t hash = 1469598103934665603ull;
  for (unsigned char ch : name) hash = (hash ^ ch) * 1099511628211ull;
  auto generator = at::detail::createCPUGenerator(random_.seed ^ hash);
  return torch::randn(shape, generator, torch::kFloat) * init.std;
}

}  // namespace saegrid
