#include "engine/npy.h"

#include <torch/torch.h>

#include <cstring>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace saegrid {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

absl::Status Malformed(const std::string& path, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("npy file ", path, ": ", problem));
}

const std::map<std::string, std::pair<torch::ScalarType, size_t>>& DescrTable() {
  static const std::map<std::string, std::pair<torch::ScalarType, size_t>> table = {
      {"<f8", {torch::kDouble, 8}}, {"<f4", {torch::kFloat, 4}}, {"<f2", {torch::kHalf, 2}},
      {"<i8", {torch::kLong, 8}},   {"<i4", {torch::kInt, 4}},   {"<i2", {torch::kShort, 2}},
      {"|u1", {torch::kByte, 1}},   {"|i1", {torch::kChar, 1}}};
  return table;
}

// Item size of every descr the reader accepts; "<u2"/"<V2" are raw 16-bit words.
size_t ItemSize(const std::string& descr) {
  if (descr == "<u2" || descr == "<V2") return 2;
  auto it = DescrTable().find(descr);
  return it == DescrTable().end() ? 0 : it->second.second;
}

// Value text of `'key': value` in the header dict, up to the next top-level comma or brace.
bool FindValue(const std::string& header, const std::string& key, std::string* value) {
  const std::string quoted = "'" + key + "'";
  size_t pos = header.find(quoted);
  if (pos == std::string::npos) return false;
  pos = header.find(':', pos + quoted.size());
  if (pos == std::string::npos) return false;
  ++pos;
  int depth = 0;
  size_t end = pos;
  for (; end < header.size(); ++end) {
    const char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    if (depth < 0) return false;
  }
  *value = std::string(absl::StripAsciiWhitespace(header.substr(pos, end - pos)));
  return true;
}

}  // namespace

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<torch::ScalarType> NpyDescrToScalarType(const std::string& descr) {
  auto it = DescrTable().find(descr);
  if (it == DescrTable().end()) {
    return absl::InvalidArgumentError("unsupported npy dtype '" + descr + "'");
  }
  return it->second.first;
}

absl::StatusOr<NpyArray> OpenNpy(const std::string& path) {
  auto mapped = MappedFile::Open(path);
  if (!mapped.ok()) return mapped.status();
  NpyArray a;
  a.file = *std::move(mapped);
  const uint8_t* p = a.file->data();
  const size_t size = a.file->size();
  if (size < 10 || std::memcmp(p, kMagic, 6) != 0) return Malformed(path, "missing the \\x93NUMPY magic");
  const int major = p[6];
  size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = p[8] | (p[9] << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) return Malformed(path, "truncated header length");
    header_len = p[8] | (p[9] << 8) | (p[10] << 16) | (static_cast<size_t>(p[11]) << 24);
    header_start = 12;
  } else {
    return Malformed(path, absl::StrCat("unsupported format version ", major));
  }
  if (header_start + header_len > size) {
    return Malformed(path, absl::StrCat("header length ", header_len, " exceeds the file size ", size));
  }
  const std::string header(reinterpret_cast<const char*>(p + header_start), header_len);
  std::string descr, fortran, shape;
  if (!FindValue(header, "descr", &descr) || !FindValue(header, "fortran_order", &fortran) ||
      !FindValue(header, "shape", &shape)) {
    return Malformed(path, "header dict lacks 'descr', 'fortran_order' or 'shape'");
  }
  if (descr.size() < 2 || (descr.front() != '\'' && descr.front() != '"')) {
    return Malformed(path, "header 'descr' is not a string");
  }
  a.descr = descr.substr(1, descr.size() - 2);
  a.item_size = ItemSize(a.descr);
  if (a.item_size == 0) return Malformed(path, "unsupported dtype '" + a.descr + "'");
  if (fortran != "False") return Malformed(path, "Fortran-order arrays are not supported");
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')') {
    return Malformed(path, "header 'shape' is not a tuple");
  }
  for (absl::string_view dim : absl::StrSplit(shape.substr(1, shape.size() - 2), ',', absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(dim), &v) || v < 0) {
      return Malformed(path, "bad dimension '" + std::string(dim) + "' in shape " + shape);
    }
    a.shape.push_back(v);
  }
  a.data_offset = header_start + header_len;
  const unsigned __int128 need = static_cast<unsigned __int128>(a.numel()) * a.item_size;
  if (need > size - a.data_offset) {
    return Malformed(path, absl::StrCat("truncated: shape (", absl::StrJoin(a.shape, ", "),
                                        ") needs ", static_cast<uint64_t>(need),
                                        " data bytes but the file holds ", size - a.data_offset));
  }
  return a;
}

absl::Status WriteNpy(const std::string& path, const torch::Tensor& tensor) {
  auto t = tensor.detach().to(torch::kCPU).contiguous();
  std::string descr;
  for (const auto& [name, entry] : DescrTable()) {
    if (entry.first == t.scalar_type()) descr = name;
  }
  if (descr.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("npy: cannot write dtype ", c10::toString(t.scalar_type())));
  }
  // Python tuple syntax: "(3, 4)", "(3,)", "()".
  const std::string shape =
      "(" + absl::StrJoin(t.sizes(), ", ") + (t.dim() == 1 ? ",)" : ")");
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string out(kMagic, 6);
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>((header.size() >> 8) & 0xff);
  out += header;
  out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return WriteFileAtomically(path, out);
}

}  // namespace saegrid
