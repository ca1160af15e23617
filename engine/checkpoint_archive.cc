#include "engine/checkpoint_archive.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace saegrid {
namespace {

namespace fs = std::filesystem;
constexpr size_t kBlock = 512;

struct Header {
  char bytes[kBlock];
};

void PutOctal(char* field, size_t width, uint64_t value) {
  std::string digits(width - 1, '0');
  for (size_t i = width - 1; i-- > 0 && value > 0; value >>= 3) digits[i] = static_cast<char>('0' + (value & 7));
  std::memcpy(field, digits.data(), width - 1);
  field[width - 1] = '\0';
}

// Sizes of 8 GiB and more use the base-256 form GNU tar and bsdtar read.
void PutSize(char* field, uint64_t size) {
  if (size < (uint64_t{1} << 33)) return PutOctal(field, 12, size);
  std::memset(field, 0, 12);
  field[0] = static_cast<char>(0x80);
  for (int i = 11; i >= 4; --i, size >>= 8) field[i] = static_cast<char>(size & 0xff);
}

absl::Status MakeHeader(const std::string& name, uint64_t size, bool directory, Header* h) {
  std::memset(h->bytes, 0, kBlock);
  std::string prefix, base = name;
  if (name.size() > 100) {
    // Split at a '/' so that prefix <= 155 and name <= 100.
    size_t cut = name.rfind('/', 155);
    while (cut != std::string::npos && name.size() - cut - 1 > 100) cut = std::string::npos;
    if (cut == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("path too long for the archive: ", name));
    prefix = name.substr(0, cut);
    base = name.substr(cut + 1);
  }
  std::memcpy(h->bytes, base.data(), base.size());
  PutOctal(h->bytes + 100, 8, directory ? 0755 : 0644);
  PutOctal(h->bytes + 108, 8, 0);
  PutOctal(h->bytes + 116, 8, 0);
  PutSize(h->bytes + 124, directory ? 0 : size);
  PutOctal(h->bytes + 136, 12, 0);
  h->bytes[156] = directory ? '5' : '0';
  std::memcpy(h->bytes + 257, "ustar", 6);
  std::memcpy(h->bytes + 263, "00", 2);
  std::memcpy(h->bytes + 345, prefix.data(), prefix.size());
  std::memset(h->bytes + 148, ' ', 8);
  unsigned sum = 0;
  for (size_t i = 0; i < kBlock; ++i) sum += static_cast<unsigned char>(h->bytes[i]);
  PutOctal(h->bytes + 148, 7, sum);
  h->bytes[155] = ' ';
  return absl::OkStatus();
}

uint64_t ReadNumber(const char* field, size_t width) {
  uint64_t v = 0;
  if (static_cast<unsigned char>(field[0]) & 0x80) {
    for (size_t i = 1; i < width; ++i) v = (v << 8) | static_cast<unsigned char>(field[i]);
    return v;
  }
  for (size_t i = 0; i < width && field[i] >= '0' && field[i] <= '7'; ++i) v = (v << 3) | (field[i] - '0');
  return v;
}

std::string Field(const char* field, size_t width) { return std::string(field, strnlen(field, width)); }

bool SafeName(const std::string& name) {
  if (name.empty() || name[0] == '/') return false;
  for (absl::string_view part : absl::StrSplit(name, '/')) {
    if (part == "..") return false;
  }
  return true;
}

}  // namespace

absl::Status PackDirectory(const std::string& dir, const std::string& archive_path) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return absl::NotFoundError(absl::StrCat("not a directory: ", dir));
  const std::string top = fs::path(dir).filename().string();
  std::vector<fs::path> entries;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    entries.push_back(it->path());
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", dir, ": ", ec.message()));
  std::sort(entries.begin(), entries.end());
  std::ofstream out(archive_path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", archive_path));
  Header h;
  auto st = MakeHeader(top + "/", 0, true, &h);
  if (!st.ok()) return st;
  out.write(h.bytes, kBlock);
  std::vector<char> buffer(1 << 20);
  for (const auto& path : entries) {
    const std::string name = absl::StrCat(top, "/", fs::relative(path, dir).string());
    const bool directory = fs::is_directory(path);
    if (!directory && !fs::is_regular_file(path)) continue;
    const uint64_t size = directory ? 0 : fs::file_size(path);
    st = MakeHeader(directory ? name + "/" : name, size, directory, &h);
    if (!st.ok()) return st;
    out.write(h.bytes, kBlock);
    if (directory) continue;
    std::ifstream in(path, std::ios::binary);
    uint64_t left = size;
    while (left > 0 && in) {
      in.read(buffer.data(), static_cast<std::streamsize>(std::min<uint64_t>(left, buffer.size())));
      out.write(buffer.data(), in.gcount());
      left -= static_cast<uint64_t>(in.gcount());
    }
    if (left != 0) return absl::DataLossError(absl::StrCat(path.string(), " changed while it was archived"));
    static const char zeros[kBlock] = {};
    if (size % kBlock) out.write(zeros, static_cast<std::streamsize>(kBlock - size % kBlock));
  }
  static const char end[2 * kBlock] = {};
  out.write(end, sizeof(end));
  out.flush();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", archive_path));
  return absl::OkStatus();
}

absl::Status UnpackArchive(const std::string& archive_path, const std::string& dest_dir) {
  std::ifstream in(archive_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", archive_path));
  std::error_code ec;
  fs::create_directories(dest_dir, ec);
  std::vector<char> buffer(1 << 20);
  Header h;
  while (true) {
    if (!in.read(h.bytes, kBlock)) return absl::DataLossError(absl::StrCat(archive_path, ": truncated archive"));
    if (std::all_of(h.bytes, h.bytes + kBlock, [](char c) { return c == 0; })) return absl::OkStatus();
    unsigned sum = 0;
    for (size_t i = 0; i < kBlock; ++i) sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(h.bytes[i]);
    if (sum != ReadNumber(h.bytes + 148, 8)) {
      return absl::DataLossError(absl::StrCat(archive_path, ": bad header checksum"));
    }
    std::string name = Field(h.bytes, 100);
    const std::string prefix = Field(h.bytes + 345, 155);
    if (!prefix.empty()) name = prefix + "/" + name;
    const char type = h.bytes[156];
    const uint64_t size = ReadNumber(h.bytes + 124, 12);
    if (!SafeName(name)) return absl::DataLossError(absl::StrCat(archive_path, ": unsafe entry name '", name, "'"));
    const fs::path target = fs::path(dest_dir) / name;
    if (type == '5') {
      fs::create_directories(target, ec);
      if (ec) return absl::InternalError(absl::StrCat("cannot create ", target.string(), ": ", ec.message()));
      continue;
    }
    if (type != '0' && type != '\0') {
      return absl::DataLossError(absl::StrCat(archive_path, ": entry '", name, "' is not a regular file"));
    }
    fs::create_directories(target.parent_path(), ec);
    std::ofstream out(target, std::ios::binary | std::ios::trunc);
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", target.string()));
    uint64_t left = size;
    while (left > 0) {
      const auto n = static_cast<std::streamsize>(std::min<uint64_t>(left, buffer.size()));
      if (!in.read(buffer.data(), n)) return absl::DataLossError(absl::StrCat(archive_path, ": '", name, "' is truncated"));
      out.write(buffer.data(), n);
      left -= static_cast<uint64_t>(n);
    }
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", target.string()));
    if (size % kBlock) in.ignore(static_cast<std::streamsize>(kBlock - size % kBlock));
  }
}

}  // namespace saegrid
