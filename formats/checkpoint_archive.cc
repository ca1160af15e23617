#include "formats/checkpoint_archive.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace saegrid {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kBlock = 512;

// Header field offsets and widths (POSIX ustar).
constexpr size_t kNameAt = 0, kNameWidth = 100;
constexpr size_t kSizeAt = 124, kSizeWidth = 12;
constexpr size_t kChecksumAt = 148, kChecksumWidth = 8;
constexpr size_t kTypeAt = 156;
constexpr size_t kMagicAt = 257;
constexpr size_t kPrefixAt = 345, kPrefixWidth = 155;

struct Header {
  char bytes[kBlock];
};

// A read-only descriptor of a regular file. O_NONBLOCK so that opening a FIFO cannot hang; it has
// no effect on the regular files that are then accepted.
class InputFile {
 public:
  static absl::StatusOr<InputFile> Open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return absl::NotFoundError(absl::StrCat("archive ", path, ": cannot open: ", std::strerror(errno)));
    InputFile f(fd);
    struct stat st;
    if (::fstat(fd, &st) != 0) return absl::InternalError(absl::StrCat("archive ", path, ": cannot stat"));
    if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat("archive ", path, ": not a regular file"));
    f.size_ = st.st_size;
    return f;
  }
  InputFile(InputFile&& o) noexcept : fd_(o.fd_), size_(o.size_) { o.fd_ = -1; }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  int64_t size() const { return size_; }
  // Reads exactly `n` bytes at `offset`; false on a short read or an I/O error.
  bool ReadAt(int64_t offset, char* out, size_t n) const {
    while (n > 0) {
      const ssize_t got = ::pread(fd_, out, n, offset);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return false;
      out += got;
      offset += got;
      n -= static_cast<size_t>(got);
    }
    return true;
  }

 private:
  explicit InputFile(int fd) : fd_(fd) {}
  int fd_;
  int64_t size_ = 0;
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
  if (name.size() > kNameWidth) {
    // Split at a '/' so that prefix <= 155 and name <= 100.
    size_t cut = name.rfind('/', kPrefixWidth);
    if (cut != std::string::npos && name.size() - cut - 1 > kNameWidth) cut = std::string::npos;
    if (cut == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("path too long for the archive: ", name));
    prefix = name.substr(0, cut);
    base = name.substr(cut + 1);
  }
  std::memcpy(h->bytes + kNameAt, base.data(), base.size());
  PutOctal(h->bytes + 100, 8, directory ? 0755 : 0644);
  PutOctal(h->bytes + 108, 8, 0);
  PutOctal(h->bytes + 116, 8, 0);
  PutSize(h->bytes + kSizeAt, directory ? 0 : size);
  PutOctal(h->bytes + 136, 12, 0);
  h->bytes[kTypeAt] = directory ? '5' : '0';
  std::memcpy(h->bytes + kMagicAt, "ustar", 6);
  std::memcpy(h->bytes + 263, "00", 2);
  std::memcpy(h->bytes + kPrefixAt, prefix.data(), prefix.size());
  std::memset(h->bytes + kChecksumAt, ' ', kChecksumWidth);
  unsigned sum = 0;
  for (int64_t i = 0; i < kBlock; ++i) sum += static_cast<unsigned char>(h->bytes[i]);
  PutOctal(h->bytes + kChecksumAt, 7, sum);
  h->bytes[kChecksumAt + 7] = ' ';
  return absl::OkStatus();
}

// An octal field: optional leading spaces, at least one digit, then only NULs and spaces.
bool ParseOctal(const char* field, size_t width, uint64_t* out) {
  size_t i = 0;
  while (i < width && field[i] == ' ') ++i;
  uint64_t v = 0;
  size_t digits = 0;
  for (; i < width && field[i] >= '0' && field[i] <= '7'; ++i, ++digits) {
    if (v > (UINT64_MAX >> 3)) return false;
    v = (v << 3) | static_cast<uint64_t>(field[i] - '0');
  }
  if (digits == 0) return false;
  for (; i < width; ++i) {
    if (field[i] != '\0' && field[i] != ' ') return false;
  }
  *out = v;
  return true;
}

// The size field: octal, or GNU base-256 (first byte 0x80, big-endian in the rest). Negative
// base-256 values (first byte 0xff) and values beyond int64 are malformed.
bool ParseSize(const char* field, int64_t* out) {
  uint64_t v = 0;
  if (static_cast<unsigned char>(field[0]) == 0x80) {
    for (size_t i = 1; i < kSizeWidth; ++i) {
      if (v > (UINT64_MAX >> 8)) return false;
      v = (v << 8) | static_cast<unsigned char>(field[i]);
    }
  } else if (!ParseOctal(field, kSizeWidth, &v)) {
    return false;
  }
  if (v > static_cast<uint64_t>(INT64_MAX)) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

std::string Field(const char* field, size_t width) { return std::string(field, strnlen(field, width)); }

// Printable form of a name for error messages (control bytes as \xNN).
std::string Printable(absl::string_view name) {
  std::string out;
  for (unsigned char c : name) {
    if (c < 0x20 || c == 0x7f) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// Why `name` (trailing '/' already removed) is not a plain relative path, or "" when it is.
std::string NameProblem(const std::string& name) {
  if (name.empty()) return "empty name";
  if (name.size() > kMaxArchiveNameBytes) return absl::StrCat("name longer than ", kMaxArchiveNameBytes, " bytes");
  if (name[0] == '/') return "absolute name";
  for (unsigned char c : name) {
    if (c < 0x20 || c == 0x7f) return "control character in name";
  }
  for (absl::string_view part : absl::StrSplit(name, '/')) {
    if (part.empty()) return "empty path component";
    if (part == "." || part == "..") return absl::StrCat("path component '", part, "'");
  }
  return "";
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
    // symlink_status: a link is neither followed nor archived.
    const auto status = fs::symlink_status(path, ec);
    const bool directory = fs::is_directory(status);
    if (!directory && !fs::is_regular_file(status)) continue;
    const uint64_t size = directory ? 0 : fs::file_size(path, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot stat ", path.string(), ": ", ec.message()));
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

absl::StatusOr<std::vector<ArchiveEntry>> ListArchive(const std::string& archive_path) {
  auto file = InputFile::Open(archive_path);
  if (!file.ok()) return file.status();
  const int64_t file_size = file->size();
  auto bad = [&](const std::string& problem) {
    return absl::DataLossError(absl::StrCat("archive ", archive_path, ": ", problem));
  };
  std::vector<ArchiveEntry> entries;
  std::map<std::string, bool> seen;  // name -> is_directory
  std::set<std::string> implied_dirs;  // every proper prefix of a name
  Header h;
  int64_t offset = 0;
  while (true) {
    const std::string after =
        entries.empty() ? std::string("at the start") : absl::StrCat("after entry '", entries.back().name, "'");
    if (offset + kBlock > file_size) {
      return bad(absl::StrCat("truncated: no end-of-archive block ", after, " (offset ", offset, ", file size ",
                              file_size, ")"));
    }
    if (!file->ReadAt(offset, h.bytes, kBlock)) return bad(absl::StrCat("cannot read the header at offset ", offset));
    if (std::all_of(h.bytes, h.bytes + kBlock, [](char c) { return c == 0; })) break;
    const std::string where = absl::StrCat("header at offset ", offset);
    // POSIX sums the bytes unsigned; some historic writers summed them signed. Either is accepted.
    uint64_t stored = 0;
    if (!ParseOctal(h.bytes + kChecksumAt, kChecksumWidth, &stored)) return bad(where + ": malformed checksum field");
    int64_t unsigned_sum = 0, signed_sum = 0;
    for (int64_t i = 0; i < kBlock; ++i) {
      const bool in_field = i >= static_cast<int64_t>(kChecksumAt) && i < static_cast<int64_t>(kChecksumAt + kChecksumWidth);
      unsigned_sum += in_field ? ' ' : static_cast<unsigned char>(h.bytes[i]);
      signed_sum += in_field ? ' ' : static_cast<signed char>(h.bytes[i]);
    }
    if (static_cast<int64_t>(stored) != unsigned_sum && static_cast<int64_t>(stored) != signed_sum) {
      return bad(absl::StrCat(where, ": bad header checksum (stored ", stored, ", computed ", unsigned_sum,
                              "; not a tar archive, or corrupted)"));
    }
    // The prefix field exists in POSIX ustar ("ustar\0"); GNU's "ustar  \0" uses those bytes otherwise.
    const bool posix = std::memcmp(h.bytes + kMagicAt, "ustar\0", 6) == 0;
    const bool gnu = std::memcmp(h.bytes + kMagicAt, "ustar  \0", 8) == 0;
    if (!posix && !gnu) return bad(where + ": not a ustar header (no \"ustar\" magic)");
    std::string name = Field(h.bytes + kNameAt, kNameWidth);
    if (posix) {
      const std::string prefix = Field(h.bytes + kPrefixAt, kPrefixWidth);
      if (!prefix.empty()) name = prefix + "/" + name;
    }
    const char type = h.bytes[kTypeAt];
    ArchiveEntry e;
    e.is_directory = type == '5';
    const std::string shown = Printable(name);
    if (type != '5' && type != '0' && type != '\0') {
      return bad(absl::StrCat("entry '", shown, "' has type '", Printable(std::string(1, type)),
                              "'; only regular files and directories are allowed"));
    }
    if (e.is_directory) {
      if (!name.empty() && name.back() == '/') name.pop_back();
    } else if (!name.empty() && name.back() == '/') {
      return bad(absl::StrCat("regular file entry '", shown, "' has a name ending in '/'"));
    }
    if (const std::string problem = NameProblem(name); !problem.empty()) {
      return bad(absl::StrCat("unsafe entry name '", shown, "' (", problem, ")"));
    }
    e.name = name;
    if (!ParseSize(h.bytes + kSizeAt, &e.size)) return bad(absl::StrCat("entry '", shown, "': malformed size field"));
    if (e.is_directory && e.size != 0) return bad(absl::StrCat("directory entry '", shown, "' has size ", e.size));
    e.data_offset = offset + kBlock;
    if (e.size > file_size - e.data_offset) {
      return bad(absl::StrCat("entry '", shown, "' is truncated: its ", e.size, " bytes at offset ", e.data_offset,
                              " run past the end of the ", file_size, "-byte archive"));
    }
    // Names must be unique and never pass through a regular file: a later entry must not replace
    // (or hide under) one that was already inspected.
    if (seen.count(name)) return bad(absl::StrCat("entry '", shown, "' appears twice"));
    if (!e.is_directory && implied_dirs.count(name)) {
      return bad(absl::StrCat("regular file entry '", shown, "' has the name of a directory of earlier entries"));
    }
    for (size_t slash = name.find('/'); slash != std::string::npos; slash = name.find('/', slash + 1)) {
      const std::string parent = name.substr(0, slash);
      auto it = seen.find(parent);
      if (it != seen.end() && !it->second) {
        return bad(absl::StrCat("entry '", shown, "' lies under the regular file '", Printable(parent), "'"));
      }
      implied_dirs.insert(parent);
    }
    if (static_cast<int64_t>(entries.size()) >= kMaxArchiveEntries) {
      return bad(absl::StrCat("more than ", kMaxArchiveEntries, " entries"));
    }
    seen.emplace(name, e.is_directory);
    offset = e.data_offset + (e.size + kBlock - 1) / kBlock * kBlock;
    entries.push_back(std::move(e));
  }
  return entries;
}

absl::StatusOr<std::string> ReadArchiveEntryRange(const std::string& archive_path, const ArchiveEntry& entry,
                                                  int64_t offset, int64_t length) {
  if (entry.is_directory) {
    return absl::InvalidArgumentError(absl::StrCat("archive ", archive_path, ": entry '", entry.name, "' is a directory"));
  }
  if (offset < 0 || length < 0 || entry.size < 0 || entry.data_offset < 0) {
    return absl::InvalidArgumentError(absl::StrCat("archive ", archive_path, ": entry '", entry.name, "': bad byte range"));
  }
  auto file = InputFile::Open(archive_path);
  if (!file.ok()) return file.status();
  const int64_t n = std::min(length, std::max<int64_t>(0, entry.size - offset));
  if (entry.data_offset > file->size() || entry.size > file->size() - entry.data_offset) {
    return absl::DataLossError(absl::StrCat("archive ", archive_path, ": entry '", entry.name,
                                            "' lies beyond the end of the file (changed since it was listed?)"));
  }
  std::string out(static_cast<size_t>(n), '\0');
  if (n > 0 && !file->ReadAt(entry.data_offset + offset, out.data(), out.size())) {
    return absl::DataLossError(absl::StrCat("archive ", archive_path, ": cannot read entry '", entry.name, "'"));
  }
  return out;
}

absl::StatusOr<std::string> ReadArchiveEntry(const std::string& archive_path, const ArchiveEntry& entry,
                                             int64_t max_bytes) {
  if (entry.size > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("archive ", archive_path, ": entry '", entry.name, "' is ",
                                                     entry.size, " bytes, more than the ", max_bytes,
                                                     "-byte limit for it"));
  }
  return ReadArchiveEntryRange(archive_path, entry, 0, entry.size);
}

absl::Status UnpackArchive(const std::string& archive_path, const std::string& dest_dir) {
  auto entries = ListArchive(archive_path);
  if (!entries.ok()) return entries.status();
  auto file = InputFile::Open(archive_path);
  if (!file.ok()) return file.status();
  std::error_code ec;
  fs::create_directories(dest_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dest_dir, ": ", ec.message()));
  std::vector<char> buffer(1 << 20);
  for (const ArchiveEntry& e : *entries) {
    // A symbolic link already under dest_dir (say, from an earlier extraction) would redirect
    // the write; names are plain, so checking each component is enough.
    fs::path target = dest_dir;
    for (absl::string_view part : absl::StrSplit(e.name, '/')) {
      target /= std::string(part);
      if (fs::is_symlink(fs::symlink_status(target, ec))) {
        return absl::FailedPreconditionError(absl::StrCat("archive ", archive_path, ": entry '", e.name,
                                                          "' would be written through the symbolic link ",
                                                          target.string()));
      }
    }
    if (e.is_directory) {
      fs::create_directories(target, ec);
      if (ec) return absl::InternalError(absl::StrCat("cannot create ", target.string(), ": ", ec.message()));
      continue;
    }
    fs::create_directories(target.parent_path(), ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", target.parent_path().string(), ": ", ec.message()));
    std::ofstream out(target, std::ios::binary | std::ios::trunc);
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", target.string()));
    int64_t done = 0;
    while (done < e.size) {
      const size_t n = static_cast<size_t>(std::min<int64_t>(e.size - done, static_cast<int64_t>(buffer.size())));
      if (!file->ReadAt(e.data_offset + done, buffer.data(), n)) {
        return absl::DataLossError(absl::StrCat("archive ", archive_path, ": entry '", e.name, "' is truncated"));
      }
      out.write(buffer.data(), static_cast<std::streamsize>(n));
      done += static_cast<int64_t>(n);
    }
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", target.string()));
  }
  return absl::OkStatus();
}

}  // namespace saegrid
