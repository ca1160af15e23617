#include "engine/safetensors.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

absl::Status Malformed(const std::string& path, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors file ", path, ": ", problem));
}

// Reads a JSON array of non-negative integers.
bool ReadIndexArray(const json& j, std::vector<int64_t>* out) {
  if (!j.is_array()) return false;
  for (const auto& v : j) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0) return false;
    out->push_back(v.get<int64_t>());
  }
  return true;
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
  const size_t size = f.file_->size();
  if (size < 8) return Malformed(path, absl::StrCat("file is ", size, " bytes, too short for the 8-byte header length"));
  uint64_t header_len = 0;
  std::memcpy(&header_len, f.file_->data(), 8);  // little-endian on every supported host
  if (header_len > size - 8) {
    return Malformed(path, absl::StrCat("header length ", header_len, " exceeds the ", size - 8,
                                        " bytes after the length field (truncated file?)"));
  }
  const char* header = reinterpret_cast<const char*>(f.file_->data() + 8);
  std::set<std::string> seen;
  std::string duplicate;
  json parsed = json::parse(header, header + header_len,
                            [&](int depth, json::parse_event_t event, json& value) {
                              if (depth == 1 && event == json::parse_event_t::key) {
                                const auto key = value.get<std::string>();
                                if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
                              }
                              return true;
                            },
                            /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return Malformed(path, "header is not valid JSON");
  if (!parsed.is_object()) return Malformed(path, "header is not a JSON object");
  if (!duplicate.empty()) return Malformed(path, "duplicate tensor name \"" + duplicate + "\"");

  const size_t buffer_size = size - 8 - header_len;
  f.buffer_ = f.file_->data() + 8 + header_len;
  for (const auto& [name, value] : parsed.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return Malformed(path, "__metadata__ is not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) return Malformed(path, "__metadata__ value \"" + k + "\" is not a string");
        f.metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor \"" + name + "\"";
    if (!value.is_object()) return Malformed(path, where + " is not an object");
    if (!value.contains("dtype") || !value["dtype"].is_string()) return Malformed(path, where + " has no string dtype");
    SafetensorsEntry e;
    e.name = name;
    e.dtype = value["dtype"].get<std::string>();
    auto type = SafetensorsDtypeToScalarType(e.dtype);
    if (!type.ok()) return Malformed(path, where + ": " + std::string(type.status().message()));
    if (!value.contains("shape") || !ReadIndexArray(value["shape"], &e.shape)) {
      return Malformed(path, where + " has no shape of non-negative integers");
    }
    std::vector<int64_t> offsets;
    if (!value.contains("data_offsets") || !ReadIndexArray(value["data_offsets"], &offsets) ||
        offsets.size() != 2) {
      return Malformed(path, where + " has no data_offsets [begin, end]");
    }
    e.begin = static_cast<size_t>(offsets[0]);
    e.end = static_cast<size_t>(offsets[1]);
    if (e.begin > e.end) return Malformed(path, where + " has data_offsets with begin > end");
    if (e.end > buffer_size) {
      return Malformed(path, absl::StrCat(where, " data_offsets [", e.begin, ", ", e.end,
                                          "] lie outside the ", buffer_size, "-byte data buffer"));
    }
    // Overflow-safe element count times item size.
    unsigned __int128 bytes = c10::elementSize(*type);
    for (int64_t dim : e.shape) bytes *= static_cast<unsigned __int128>(dim);
    if (bytes != static_cast<unsigned __int128>(e.end - e.begin)) {
      return Malformed(path, absl::StrCat(where, " has shape [", absl::StrJoin(e.shape, ", "),
                                          "] of ", e.dtype, " but a byte range of ",
                                          e.end - e.begin));
    }
    f.entries_.push_back(std::move(e));
  }
  // Byte ranges must tile the buffer: contiguous, no overlap, no gap, nothing left over.
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : f.entries_) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  size_t cursor = 0;
  for (const auto* e : by_offset) {
    if (e->begin < cursor) return Malformed(path, "tensor \"" + e->name + "\" overlaps another tensor");
    if (e->begin > cursor) {
      return Malformed(path, absl::StrCat("gap of ", e->begin - cursor, " bytes before tensor \"",
                                          e->name, "\""));
    }
    cursor = e->end;
  }
  if (cursor != buffer_size) {
    return Malformed(path, absl::StrCat("tensors cover ", cursor, " of the ", buffer_size,
                                        " data bytes"));
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
  return WriteFileAtomically(path, SerializeSafetensors(tensors, metadata));
}

}  // namespace saegrid
