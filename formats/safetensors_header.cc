#include "formats/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace saegrid {
namespace {

using nlohmann::json;

absl::Status Malformed(std::string_view what, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors file ", std::string(what), ": ", problem));
}

// A SAX reader of exactly the header's shape: root object -> tensors {dtype, shape, offsets} and
// __metadata__ {string: string}. No JSON tree is built, so memory stays proportional to the
// tensors however the bytes nest. After the first problem it only lets the parser finish, so that
// text which is not JSON at all is reported as such rather than by its first odd member.
class HeaderReader : public nlohmann::json_sax<json> {
 public:
  explicit HeaderReader(int64_t buffer_size) : buffer_size_(buffer_size) {}

  bool null() override { return Scalar("null"); }
  bool boolean(bool) override { return Scalar("a boolean"); }
  bool number_integer(int64_t v) override {
    if (v >= 0) return Index(v);
    return Scalar("a negative number");
  }
  bool number_unsigned(uint64_t v) override {
    if (v > static_cast<uint64_t>(INT64_MAX)) return Scalar("a number beyond int64");
    return Index(static_cast<int64_t>(v));
  }
  bool number_float(double, const std::string&) override { return Scalar("a non-integer number"); }
  bool binary(json::binary_t&) override { return Scalar("binary data"); }
  bool string(std::string& s) override {
    if (!error_.empty()) return true;
    if (at_ == At::kMetadata) {
      out_.metadata[key_] = s;
      return true;
    }
    if (at_ == At::kTensor && key_ == "dtype") {
      tensor_.dtype = s;
      has_dtype_ = true;
      return true;
    }
    return Scalar("a string");
  }
  bool start_object(std::size_t) override {
    if (!error_.empty()) return true;
    switch (at_) {
      case At::kTop: at_ = At::kRoot; return true;
      case At::kRoot:
        if (key_ == "__metadata__") {
          at_ = At::kMetadata;
        } else {
          at_ = At::kTensor;
          tensor_ = SafetensorsTensorInfo();
          tensor_.name = key_;
          fields_.clear();
          has_dtype_ = has_shape_ = false;
          offsets_.clear();
        }
        return true;
      default: return Scalar("an object");
    }
  }
  bool end_object() override {
    if (!error_.empty()) return true;
    if (at_ == At::kMetadata) {
      at_ = At::kRoot;
    } else if (at_ == At::kTensor) {
      at_ = At::kRoot;
      FinishTensor();
    } else if (at_ == At::kRoot) {
      at_ = At::kDone;
    }
    return true;
  }
  bool start_array(std::size_t) override {
    if (!error_.empty()) return true;
    if (at_ == At::kTensor && key_ == "shape") {
      at_ = At::kShape;
      has_shape_ = true;
      return true;
    }
    if (at_ == At::kTensor && key_ == "data_offsets") {
      at_ = At::kOffsets;
      return true;
    }
    return Scalar("an array");
  }
  bool end_array() override {
    if (!error_.empty()) return true;
    at_ = At::kTensor;  // only the shape and offset arrays are ever entered
    return true;
  }
  bool key(std::string& k) override {
    if (!error_.empty()) return true;
    key_ = k;
    if (at_ == At::kRoot) {
      if (!names_.insert(k).second) {
        return Fail(k == "__metadata__" ? std::string("__metadata__ appears twice")
                                        : "duplicate tensor name \"" + k + "\"");
      }
      if (k.empty()) return Fail("a tensor has an empty name");
    } else if (at_ == At::kMetadata) {
      if (out_.metadata.count(k)) return Fail("duplicate __metadata__ key \"" + k + "\"");
    } else if (at_ == At::kTensor) {
      if (k != "dtype" && k != "shape" && k != "data_offsets") {
        return Fail(Where() + " has an unknown field \"" + k + "\"");
      }
      if (!fields_.insert(k).second) return Fail(Where() + " has \"" + k + "\" twice");
    }
    return true;
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception&) override {
    json_error_ = absl::StrCat("header is not valid JSON (at byte ", position, " of the header)");
    return false;
  }

  // The parsed header, or the first problem found.
  absl::StatusOr<SafetensorsHeader> Result(std::string_view what) {
    if (!json_error_.empty()) return Malformed(what, json_error_);
    if (!error_.empty()) return Malformed(what, error_);
    return std::move(out_);
  }

 private:
  enum class At { kTop, kRoot, kMetadata, kTensor, kShape, kOffsets, kDone };

  std::string Where() const { return "tensor \"" + tensor_.name + "\""; }

  bool Fail(const std::string& problem) {
    if (error_.empty()) error_ = problem;
    return true;  // keep parsing: invalid JSON takes precedence
  }

  // A value other than the ones the current position expects.
  bool Scalar(const char* kind) {
    if (!error_.empty()) return true;
    switch (at_) {
      case At::kTop: return Fail("header is not a JSON object");
      case At::kRoot:
        return Fail(key_ == "__metadata__" ? std::string("__metadata__ is not an object")
                                           : "tensor \"" + key_ + "\" is not an object");
      case At::kMetadata: return Fail("__metadata__ value \"" + key_ + "\" is not a string");
      case At::kTensor:
        if (key_ == "dtype") return Fail(Where() + " has no string dtype");
        if (key_ == "shape") return Fail(Where() + " has no shape of non-negative integers");
        return Fail(Where() + " has no data_offsets [begin, end]");
      case At::kShape: return Fail(absl::StrCat(Where(), " has ", kind, " in its shape (need non-negative integers)"));
      case At::kOffsets:
        return Fail(absl::StrCat(Where(), " has ", kind, " in its data_offsets (need non-negative integers)"));
      case At::kDone: return Fail("header has content after its object");
    }
    return Fail("unexpected value");
  }

  bool Index(int64_t v) {
    if (!error_.empty()) return true;
    if (at_ == At::kShape) {
      tensor_.shape.push_back(v);
      return true;
    }
    if (at_ == At::kOffsets) {
      if (offsets_.size() >= 2) return Fail(Where() + " has no data_offsets [begin, end] (more than two values)");
      offsets_.push_back(v);
      return true;
    }
    return Scalar("a number");
  }

  void FinishTensor() {
    const std::string where = Where();
    if (!has_dtype_) return void(Fail(where + " has no string dtype"));
    const int64_t item = SafetensorsDtypeSize(tensor_.dtype);
    if (item == 0) return void(Fail(where + ": unknown dtype \"" + tensor_.dtype + "\""));
    if (!has_shape_) return void(Fail(where + " has no shape of non-negative integers"));
    if (offsets_.size() != 2) return void(Fail(where + " has no data_offsets [begin, end]"));
    tensor_.begin = offsets_[0];
    tensor_.end = offsets_[1];
    if (tensor_.begin > tensor_.end) return void(Fail(where + " has data_offsets with begin > end"));
    if (tensor_.end > buffer_size_) {
      return void(Fail(absl::StrCat(where, " data_offsets [", tensor_.begin, ", ", tensor_.end, "] lie outside the ",
                                    buffer_size_, "-byte data buffer")));
    }
    // Element count x item size without int64 overflow; any zero dimension makes it 0.
    int64_t bytes = item;
    const bool empty = std::find(tensor_.shape.begin(), tensor_.shape.end(), 0) != tensor_.shape.end();
    if (empty) {
      bytes = 0;
    } else {
      for (int64_t dim : tensor_.shape) {
        if (__builtin_mul_overflow(bytes, dim, &bytes)) {
          return void(Fail(absl::StrCat(where, " has shape [", absl::StrJoin(tensor_.shape, ", "), "] of ",
                                        tensor_.dtype, " whose byte size overflows int64")));
        }
      }
    }
    if (bytes != tensor_.end - tensor_.begin) {
      return void(Fail(absl::StrCat(where, " has shape [", absl::StrJoin(tensor_.shape, ", "), "] of ", tensor_.dtype,
                                    " (", bytes, " bytes) but a byte range of ", tensor_.end - tensor_.begin)));
    }
    out_.tensors.push_back(std::move(tensor_));
  }

  const int64_t buffer_size_;
  At at_ = At::kTop;
  std::string key_;  // the last key at the current level
  std::set<std::string> names_;
  SafetensorsTensorInfo tensor_;
  std::set<std::string> fields_;
  bool has_dtype_ = false, has_shape_ = false;
  std::vector<int64_t> offsets_;
  SafetensorsHeader out_;
  std::string error_, json_error_;
};

}  // namespace

const SafetensorsTensorInfo* SafetensorsHeader::Find(std::string_view name) const {
  auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                             [](const SafetensorsTensorInfo& t, std::string_view n) { return t.name < n; });
  return it != tensors.end() && it->name == name ? &*it : nullptr;
}

int64_t SafetensorsDtypeSize(std::string_view dtype) {
  static const std::pair<std::string_view, int64_t> kSizes[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}};
  for (const auto& [name, size] : kSizes) {
    if (name == dtype) return size;
  }
  return 0;
}

absl::StatusOr<int64_t> SafetensorsHeaderBytesNeeded(std::string_view first_bytes, int64_t file_size,
                                                     std::string_view what) {
  if (file_size < 8) {
    return Malformed(what, absl::StrCat("file is ", file_size, " bytes, too short for the 8-byte header length"));
  }
  if (first_bytes.size() < 8) {
    return Malformed(what, absl::StrCat("only ", first_bytes.size(), " bytes of the file were given"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(first_bytes[i]);
  if (header_len > static_cast<uint64_t>(file_size - 8)) {
    return Malformed(what, absl::StrCat("header length ", header_len, " exceeds the ", file_size - 8,
                                        " bytes after the length field (truncated file?)"));
  }
  if (header_len > static_cast<uint64_t>(kMaxSafetensorsHeaderBytes)) {
    return Malformed(what, absl::StrCat("header length ", header_len, " exceeds the limit of ",
                                        kMaxSafetensorsHeaderBytes, " bytes"));
  }
  return 8 + static_cast<int64_t>(header_len);
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view file_prefix, int64_t file_size,
                                                         std::string_view what) {
  auto needed = SafetensorsHeaderBytesNeeded(file_prefix, file_size, what);
  if (!needed.ok()) return needed.status();
  if (static_cast<int64_t>(file_prefix.size()) < *needed) {
    return Malformed(what, absl::StrCat("only ", file_prefix.size(), " of the ", *needed,
                                        " header bytes were given"));
  }
  HeaderReader reader(file_size - *needed);
  const char* begin = file_prefix.data() + 8;
  json::sax_parse(begin, file_prefix.data() + *needed, &reader);
  auto header = reader.Result(what);
  if (!header.ok()) return header.status();
  header->data_start = *needed;
  std::sort(header->tensors.begin(), header->tensors.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  // Byte ranges must tile the data region: contiguous, no overlap, no gap, nothing left over.
  std::vector<const SafetensorsTensorInfo*> by_offset;
  for (const auto& t : header->tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  int64_t cursor = 0;
  for (const auto* t : by_offset) {
    if (t->begin < cursor) return Malformed(what, "tensor \"" + t->name + "\" overlaps another tensor");
    if (t->begin > cursor) {
      return Malformed(what, absl::StrCat("gap of ", t->begin - cursor, " bytes before tensor \"", t->name, "\""));
    }
    cursor = t->end;
  }
  const int64_t buffer_size = file_size - *needed;
  if (cursor != buffer_size) {
    return Malformed(what, absl::StrCat("tensors cover ", cursor, " of the ", buffer_size, " data bytes"));
  }
  return header;
}

}  // namespace saegrid
