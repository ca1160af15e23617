#include "engine/safetensors.h"

#include <torch/torch.h>

#include <cstring>
#include <string_view>

#include "base/durable_file.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "formats/safetensors_header.h"
#include "nlohmann/json.hpp"

namespace saegrid {
namespace {

using nlohmann::json;

const std::map<std::string, torch::ScalarType>& DtypeTable() {
  static const std::map<std::string, torch::ScalarType> table = {
      {"F64", torch::kDouble}, {"F32", torch::kFloat},  {"F16", torch::kHalf},
      {"BF16", torch::kBFloat16}, {"I64", torch::kLong}, {"I32", torch::kInt},
      {"I16", torch::kShort},  {"I8", torch::kChar},   {"U8", torch::kByte},
      {"BOOL", torch::kBool}};
  return table;
}

}  // namespace

absl::StatusOr<torch::ScalarType> SafetensorsDtypeToScalarType(const std::string& dtype) {
  auto it = DtypeTable().find(dtype);
  if (it == DtypeTable().end()) return absl::InvalidArgumentError("unknown dtype \"" + dtype + "\"");
  return it->second;
}

absl::StatusOr<std::string> ScalarTypeToSafetensorsDtype(torch::ScalarType type) {
  for (const auto& [name, t] : DtypeTable()) {
    if (t == type) return name;
  }
  return absl::InvalidArgumentError(absl::StrCat("no safetensors dtype for ", c10::toString(type)));
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  auto mapped = MappedFile::Open(path);
  if (!mapped.ok()) return mapped.status();
  SafetensorsFile f;
  f.file_ = *std::move(mapped);
  const std::string_view bytes(reinterpret_cast<const char*>(f.file_->data()), f.file_->size());
  auto header = ParseSafetensorsHeader(bytes, static_cast<int64_t>(bytes.size()), path);
  if (!header.ok()) return header.status();
  f.buffer_ = f.file_->data() + header->data_start;
  f.metadata_ = std::move(header->metadata);
  for (auto& t : header->tensors) {
    SafetensorsEntry e;
    e.name = std::move(t.name);
    e.dtype = std::move(t.dtype);
    e.shape = std::move(t.shape);
    e.begin = static_cast<size_t>(t.begin);
    e.end = static_cast<size_t>(t.end);
    f.entries_.push_back(std::move(e));
  }
  for (size_t i = 0; i < f.entries_.size(); ++i) f.index_[f.entries_[i].name] = i;
  return f;
}

absl::StatusOr<SafetensorsEntry> SafetensorsFile::Entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat("safetensors file ", path(), " has no tensor \"", name, "\""));
  }
  return entries_[it->second];
}

absl::StatusOr<torch::Tensor> SafetensorsFile::Get(const std::string& name) const {
  auto entry = Entry(name);
  if (!entry.ok()) return entry.status();
  auto type = SafetensorsDtypeToScalarType(entry->dtype);
  auto out = torch::empty(entry->shape, torch::TensorOptions().dtype(*type));
  if (entry->end > entry->begin) {
    std::memcpy(out.data_ptr(), buffer_ + entry->begin, entry->end - entry->begin);
  }
  return out;
}

std::string SerializeSafetensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                 const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> contiguous;
  size_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    auto t = tensor.detach().to(torch::kCPU).contiguous();
    auto dtype = ScalarTypeToSafetensorsDtype(t.scalar_type());
    TORCH_CHECK(dtype.ok(), std::string(dtype.status().message()));
    const size_t bytes = t.numel() * t.element_size();
    header[name] = {{"dtype", *dtype}, {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(t);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  std::string out(8, '\0');
  const uint64_t len = text.size();
  std::memcpy(out.data(), &len, 8);
  out += text;
  out.reserve(out.size() + offset);
  for (const auto& t : contiguous) {
    out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  }
  return out;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  return WriteFileDurably(path, SerializeSafetensors(tensors, metadata));
}

}  // namespace saegrid
