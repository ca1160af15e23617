#include "engine/npy.h"

#include <torch/torch.h>

#include <cstring>
#include <map>
#include <string_view>

#include "base/durable_file.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formats/npy_header.h"

namespace saegrid {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

const std::map<std::string, std::pair<torch::ScalarType, size_t>>& DescrTable() {
  static const std::map<std::string, std::pair<torch::ScalarType, size_t>> table = {
      {"<f8", {torch::kDouble, 8}}, {"<f4", {torch::kFloat, 4}}, {"<f2", {torch::kHalf, 2}},
      {"<i8", {torch::kLong, 8}},   {"<i4", {torch::kInt, 4}},   {"<i2", {torch::kShort, 2}},
      {"|u1", {torch::kByte, 1}},   {"|i1", {torch::kChar, 1}}};
  return table;
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
  const std::string_view bytes(reinterpret_cast<const char*>(a.file->data()), a.file->size());
  auto header = ParseNpyHeader(bytes, static_cast<int64_t>(bytes.size()), path);
  if (!header.ok()) return header.status();
  if (header->fortran_order) {
    return absl::InvalidArgumentError("npy file " + path + ": Fortran-order arrays are not supported");
  }
  a.descr = header->descr;
  a.item_size = static_cast<size_t>(header->item_size);
  a.shape = header->shape;
  a.data_offset = static_cast<size_t>(header->data_offset);
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
  return WriteFileDurably(path, out);
}

}  // namespace saegrid
