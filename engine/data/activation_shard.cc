#include "engine/data/activation_shard.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/npy.h"
#include "engine/safetensors.h"

namespace saegrid {
namespace {

size_t FormatBytes(RowFormat f) {
  switch (f) {
    case RowFormat::kF32: return 4;
    case RowFormat::kF64: return 8;
    default: return 2;
  }
}

template <typename T>
void Convert(const uint8_t* src, int64_t n, float* out) {
  const T* s = reinterpret_cast<const T*>(src);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(s[i]);
}

absl::Status Invalid(const std::string& path, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("activation file ", path, ": ", problem));
}

absl::StatusOr<RowFormat> FormatFromNpy(const std::string& path, const std::string& descr,
                                        const std::string& dtype_override) {
  if (dtype_override == "bf16") {
    if (descr == "<u2" || descr == "<V2" || descr == "<f2") return RowFormat::kBF16;
    return Invalid(path, "data.dtype is bf16 but the file stores '" + descr + "' (need 2-byte items)");
  }
  if (descr == "<f4") return RowFormat::kF32;
  if (descr == "<f2") return RowFormat::kF16;
  if (descr == "<f8") return RowFormat::kF64;
  if (descr == "<u2" || descr == "<V2") {
    return Invalid(path, "stores 16-bit words ('" + descr +
                             "'); set data.dtype: bf16 if they are bfloat16 bits");
  }
  return Invalid(path, "unsupported activation dtype '" + descr + "' (need <f4, <f2, <f8 or bf16)");
}

}  // namespace

std::shared_ptr<ActivationShard> ActivationShard::InMemory(std::string name, torch::Tensor rows) {
  auto shard = std::make_shared<ActivationShard>();
  shard->path_ = std::move(name);
  shard->owned_ = rows.to(torch::kFloat).contiguous();
  shard->rows_ = shard->owned_.size(0);
  shard->d_ = shard->owned_.size(1);
  shard->format_ = RowFormat::kF32;
  shard->data_ = static_cast<const uint8_t*>(shard->owned_.data_ptr());
  return shard;
}

absl::StatusOr<std::shared_ptr<ActivationShard>> ActivationShard::Open(
    const std::string& path, const std::string& tokens_path, const std::string& dtype_override) {
  auto shard = std::make_shared<ActivationShard>();
  shard->path_ = path;
  if (absl::EndsWith(path, ".npy")) {
    auto array = OpenNpy(path);
    if (!array.ok()) return array.status();
    if (array->shape.size() != 2) {
      return Invalid(path, absl::StrCat("activations must be 2-D [tokens, d], got shape (",
                                        absl::StrJoin(array->shape, ", "), ")"));
    }
    auto format = FormatFromNpy(path, array->descr, dtype_override);
    if (!format.ok()) return format.status();
    shard->format_ = *format;
    shard->rows_ = array->shape[0];
    shard->d_ = array->shape[1];
    shard->file_ = array->file;
    shard->data_ = array->data();
    std::string tokens = tokens_path;
    if (tokens.empty()) {
      const std::string sibling = path.substr(0, path.size() - 4) + ".tokens.npy";
      if (std::filesystem::exists(sibling)) tokens = sibling;
    }
    if (!tokens.empty()) {
      auto tok = OpenNpy(tokens);
      if (!tok.ok()) return tok.status();
      if (tok->descr != "<i4" && tok->descr != "<i8") {
        return Invalid(tokens, "token ids must be int32 or int64, got '" + tok->descr + "'");
      }
      if (tok->shape.size() != 1) return Invalid(tokens, "token ids must be 1-D");
      auto st = shard->AttachTokens(tok->file, tok->data(), tok->shape[0],
                                    static_cast<int>(tok->item_size), tokens);
      if (!st.ok()) return st;
    }
  } else if (absl::EndsWith(path, ".safetensors")) {
    auto file = SafetensorsFile::Open(path);
    if (!file.ok()) return file.status();
    auto entry = file->Entry("activations");
    if (!entry.ok()) return Invalid(path, "has no tensor named \"activations\"");
    if (entry->shape.size() != 2) return Invalid(path, "\"activations\" must be 2-D [tokens, d]");
    if (entry->dtype == "F32") shard->format_ = RowFormat::kF32;
    else if (entry->dtype == "F16") shard->format_ = RowFormat::kF16;
    else if (entry->dtype == "BF16") shard->format_ = RowFormat::kBF16;
    else if (entry->dtype == "F64") shard->format_ = RowFormat::kF64;
    else return Invalid(path, "unsupported activation dtype " + entry->dtype);
    shard->rows_ = entry->shape[0];
    shard->d_ = entry->shape[1];
    shard->file_ = file->mapping();
    shard->data_ = file->DataOf(*entry);
    if (file->Has("tokens")) {
      auto tok = file->Entry("tokens");
      if (tok->shape.size() != 1 || (tok->dtype != "I32" && tok->dtype != "I64")) {
        return Invalid(path, "\"tokens\" must be a 1-D I32 or I64 tensor");
      }
      auto st = shard->AttachTokens(shard->file_, file->DataOf(*tok), tok->shape[0], tok->dtype == "I32" ? 4 : 8, path);
      if (!st.ok()) return st;
    }
  } else {
    return Invalid(path, "unknown extension (need .npy or .safetensors)");
  }
  if (shard->d_ <= 0) return Invalid(path, "activation width is 0");
  return shard;
}

absl::Status ActivationShard::AttachTokens(const std::shared_ptr<const MappedFile>& file,
                                           const uint8_t* data, int64_t count, int token_bytes,
                                           const std::string& where) {
  if (count != rows_) {
    return Invalid(where, absl::StrCat("has ", count, " token ids for ", rows_, " activation rows"));
  }
  tokens_file_ = file;
  tokens_data_ = data;
  token_bytes_ = token_bytes;
  return absl::OkStatus();
}

absl::Status ActivationShard::CopyRows(int64_t begin, int64_t count, float* out) const {
  if (begin < 0 || count < 0 || begin + count > rows_) {
    return absl::OutOfRangeError(absl::StrCat("rows [", begin, ", ", begin + count, ") outside ",
                                              path_, " (", rows_, " rows)"));
  }
  const int64_t n = count * d_;
  const uint8_t* src = data_ + static_cast<size_t>(begin) * d_ * FormatBytes(format_);
  switch (format_) {
    case RowFormat::kF32: std::memcpy(out, src, n * sizeof(float)); break;
    case RowFormat::kF16: Convert<c10::Half>(src, n, out); break;
    case RowFormat::kBF16: Convert<c10::BFloat16>(src, n, out); break;
    case RowFormat::kF64: Convert<double>(src, n, out); break;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(out[i])) {
      return Invalid(path_, absl::StrCat("row ", begin + i / d_, " column ", i % d_, " is ",
                                         std::isnan(out[i]) ? "NaN" : "Inf"));
    }
  }
  return absl::OkStatus();
}

int64_t ActivationShard::TokenAt(int64_t row) const {
  if (tokens_data_ == nullptr) return -1;
  if (token_bytes_ == 4) {
    int32_t v;
    std::memcpy(&v, tokens_data_ + row * 4, 4);
    return v;
  }
  int64_t v;
  std::memcpy(&v, tokens_data_ + row * 8, 8);
  return v;
}

}  // namespace saegrid
