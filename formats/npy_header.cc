#include "formats/npy_header.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace saegrid {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

absl::Status Malformed(std::string_view what, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("npy file ", std::string(what), ": ", problem));
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Header text as it may appear in a message: at most 60 bytes, non-printable ones as '?'.
std::string Printable(std::string_view text) {
  std::string s(text.substr(0, 60));
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  }
  return s;
}

// A cursor over the header dict text: the subset of Python literal syntax NumPy writes.
class DictReader {
 public:
  explicit DictReader(std::string_view text) : text_(text) {}

  void SkipSpace() {
    while (pos_ < text_.size() && IsSpace(text_[pos_])) ++pos_;
  }
  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return AtEnd() ? '\0' : text_[pos_]; }
  bool Consume(char c) {
    if (Peek() != c || AtEnd()) return false;
    ++pos_;
    return true;
  }
  size_t pos() const { return pos_; }

  // A quoted string without escapes; false (with *problem set) when malformed.
  bool String(std::string* out, std::string* problem) {
    const char quote = Peek();
    if (quote != '\'' && quote != '"') {
      *problem = "expected a quoted string";
      return false;
    }
    const size_t close = text_.find(quote, pos_ + 1);
    if (close == std::string_view::npos) {
      *problem = "unterminated string";
      return false;
    }
    const std::string_view body = text_.substr(pos_ + 1, close - pos_ - 1);
    for (char c : body) {
      if (c == '\\' || static_cast<unsigned char>(c) < 0x20) {
        *problem = "escape sequences and control characters are not supported in strings";
        return false;
      }
    }
    *out = std::string(body);
    pos_ = close + 1;
    return true;
  }

  // A bare word (True, False, ...).
  std::string_view Word() {
    const size_t start = pos_;
    while (pos_ < text_.size() && (std::isalnum(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '_')) ++pos_;
    return text_.substr(start, pos_ - start);
  }

  // Text up to (not including) the next of `stops`, whitespace-trimmed.
  std::string_view Token(std::string_view stops) {
    const size_t start = pos_;
    while (pos_ < text_.size() && stops.find(text_[pos_]) == std::string_view::npos) ++pos_;
    std::string_view t = text_.substr(start, pos_ - start);
    while (!t.empty() && IsSpace(t.front())) t.remove_prefix(1);
    while (!t.empty() && IsSpace(t.back())) t.remove_suffix(1);
    return t;
  }

  // Up to 60 characters from `from`, for error messages.
  std::string Excerpt(size_t from, size_t to = std::string_view::npos) const {
    from = std::min(from, text_.size());
    return Printable(text_.substr(from, to == std::string_view::npos ? to : to - from));
  }

 private:
  std::string_view text_;
  size_t pos_ = 0;
};

// A non-negative decimal integer, with the 'L' suffix Python 2 wrote; false on overflow.
bool ParseDimension(std::string_view t, int64_t* out) {
  if (!t.empty() && (t.back() == 'L' || t.back() == 'l')) t.remove_suffix(1);
  if (t.empty() || t.size() > 19) return false;
  int64_t v = 0;
  for (char c : t) {
    if (c < '0' || c > '9') return false;
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, c - '0', &v)) return false;
  }
  *out = v;
  return true;
}

// The shape tuple: "()", "(n,)", "(n, m)", "(n, m,)".
absl::Status ParseShape(DictReader& r, std::string_view what, std::vector<int64_t>* shape) {
  const size_t start = r.pos();
  if (!r.Consume('(')) return Malformed(what, "header 'shape' is not a tuple");
  bool trailing_comma = false;
  r.SkipSpace();
  while (!r.Consume(')')) {
    const std::string_view token = r.Token(",)}");
    if (r.AtEnd() || r.Peek() == '}') return Malformed(what, "header 'shape' tuple is not closed: " + r.Excerpt(start));
    int64_t v;
    if (!ParseDimension(token, &v)) {
      return Malformed(what, absl::StrCat("bad dimension '", Printable(token), "' in shape ",
                                          r.Excerpt(start, r.pos() + 1)));
    }
    shape->push_back(v);
    trailing_comma = r.Consume(',');
    r.SkipSpace();
    if (!trailing_comma && r.Peek() != ')') return Malformed(what, "header 'shape' is not a tuple");
  }
  // "(3)" is the integer 3 in Python, not a tuple.
  if (shape->size() == 1 && !trailing_comma) return Malformed(what, "header 'shape' (n) is not a tuple; write (n,)");
  return absl::OkStatus();
}

}  // namespace

int64_t NpyItemSize(std::string_view descr) {
  static const std::pair<std::string_view, int64_t> kSizes[] = {
      {"<f8", 8}, {"<f4", 4}, {"<f2", 2}, {"<i8", 8}, {"<i4", 4},
      {"<i2", 2}, {"|u1", 1}, {"|i1", 1}, {"<u2", 2}, {"<V2", 2}, {"<u4", 4}};
  for (const auto& [name, size] : kSizes) {
    if (name == descr) return size;
  }
  return 0;
}

absl::StatusOr<int64_t> NpyHeaderBytesNeeded(std::string_view first_bytes, int64_t file_size, std::string_view what) {
  if (file_size < 8 || first_bytes.size() < 8 || std::memcmp(first_bytes.data(), kMagic, 6) != 0) {
    return Malformed(what, "missing the \\x93NUMPY magic");
  }
  const auto byte = [&](size_t i) { return static_cast<int64_t>(static_cast<unsigned char>(first_bytes[i])); };
  const int64_t major = byte(6), minor = byte(7);
  if ((major != 1 && major != 2 && major != 3) || minor != 0) {
    return Malformed(what, absl::StrCat("unsupported format version ", major, ".", minor));
  }
  const int64_t start = major == 1 ? 10 : 12;
  if (file_size < start) return Malformed(what, "truncated header length");
  if (static_cast<int64_t>(first_bytes.size()) < start) {
    return Malformed(what, absl::StrCat("only ", first_bytes.size(), " bytes of the file were given"));
  }
  int64_t header_len = 0;
  for (int64_t i = start - 1; i >= 8; --i) header_len = (header_len << 8) | byte(static_cast<size_t>(i));
  if (header_len > kMaxNpyHeaderBytes) {
    return Malformed(what, absl::StrCat("header length ", header_len, " exceeds the limit of ", kMaxNpyHeaderBytes));
  }
  if (start + header_len > file_size) {
    return Malformed(what, absl::StrCat("header length ", header_len, " exceeds the file size ", file_size));
  }
  return start + header_len;
}

absl::StatusOr<NpyHeader> ParseNpyHeader(std::string_view file_prefix, int64_t file_size, std::string_view what) {
  auto needed = NpyHeaderBytesNeeded(file_prefix, file_size, what);
  if (!needed.ok()) return needed.status();
  if (static_cast<int64_t>(file_prefix.size()) < *needed) {
    return Malformed(what, absl::StrCat("only ", file_prefix.size(), " of the ", *needed, " header bytes were given"));
  }
  NpyHeader h;
  h.major_version = static_cast<unsigned char>(file_prefix[6]);
  h.minor_version = static_cast<unsigned char>(file_prefix[7]);
  const int64_t start = h.major_version == 1 ? 10 : 12;
  DictReader r(file_prefix.substr(static_cast<size_t>(start), static_cast<size_t>(*needed - start)));
  r.SkipSpace();
  if (!r.Consume('{')) return Malformed(what, "header is not a dict: " + r.Excerpt(r.pos()));
  std::set<std::string> keys;
  std::string descr;
  bool have_descr = false;
  r.SkipSpace();
  while (!r.Consume('}')) {
    std::string key, problem;
    if (!r.String(&key, &problem)) return Malformed(what, "header dict key: " + problem + " at: " + r.Excerpt(r.pos()));
    if (key != "descr" && key != "fortran_order" && key != "shape") {
      return Malformed(what, "header dict has an unknown key '" + key + "'");
    }
    if (!keys.insert(key).second) return Malformed(what, "header dict has '" + key + "' twice");
    r.SkipSpace();
    if (!r.Consume(':')) return Malformed(what, "header dict: expected ':' after '" + key + "'");
    r.SkipSpace();
    if (key == "descr") {
      if (!r.String(&descr, &problem)) return Malformed(what, "header 'descr' is not a string");
      have_descr = true;
    } else if (key == "fortran_order") {
      const std::string_view word = r.Word();
      if (word != "True" && word != "False") return Malformed(what, "header 'fortran_order' is not True or False");
      h.fortran_order = word == "True";
    } else {
      if (auto st = ParseShape(r, what, &h.shape); !st.ok()) return st;
    }
    r.SkipSpace();
    if (r.Consume(',')) {
      r.SkipSpace();
    } else if (r.Peek() != '}') {
      return Malformed(what, "header dict: expected ',' or '}' at: " + r.Excerpt(r.pos()));
    }
  }
  r.SkipSpace();
  if (!r.AtEnd()) return Malformed(what, "header has text after the dict: " + r.Excerpt(r.pos()));
  if (!have_descr || !keys.count("fortran_order") || !keys.count("shape")) {
    return Malformed(what, "header dict lacks 'descr', 'fortran_order' or 'shape'");
  }
  h.descr = descr;
  h.item_size = NpyItemSize(descr);
  if (h.item_size == 0) return Malformed(what, "unsupported dtype '" + descr + "'");
  h.numel = 1;
  const bool empty = std::find(h.shape.begin(), h.shape.end(), 0) != h.shape.end();
  for (int64_t d : h.shape) {
    if (!empty && __builtin_mul_overflow(h.numel, d, &h.numel)) {
      return Malformed(what, "shape (" + absl::StrJoin(h.shape, ", ") + ") has more elements than int64 holds");
    }
  }
  if (empty) h.numel = 0;
  if (__builtin_mul_overflow(h.numel, h.item_size, &h.data_bytes)) {
    return Malformed(what, "shape (" + absl::StrJoin(h.shape, ", ") + ") has more bytes than int64 holds");
  }
  h.data_offset = *needed;
  if (h.data_bytes > file_size - h.data_offset) {
    return Malformed(what, absl::StrCat("truncated: shape (", absl::StrJoin(h.shape, ", "), ") needs ", h.data_bytes,
                                        " data bytes but the file holds ", file_size - h.data_offset));
  }
  return h;
}

}  // namespace saegrid
