#include "engine/lm/token_file.h"

#include <torch/torch.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/npy.h"

namespace saegrid {
namespace {

absl::Status Bad(const std::string& path, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("token file ", path, ": ", why));
}

// Widens `count` ids of `item_size` bytes (little-endian, as the x86 and the formats are) into
// `out`; returns the index of the first id outside [0, vocab), or -1.
template <typename T>
int64_t Widen(const uint8_t* src, int64_t count, int64_t vocab, int64_t* out) {
  int64_t bad = -1;
  for (int64_t i = 0; i < count; ++i) {
    T id;
    std::memcpy(&id, src + i * sizeof(T), sizeof(T));
    const int64_t value = static_cast<int64_t>(id);
    out[i] = value;
    if ((value < 0 || value >= vocab) && bad < 0) bad = i;
  }
  return bad;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TokenFile>> TokenFile::Open(const TokenFileOptions& options) {
  const std::string& path = options.path;
  if (options.context_length <= 0) return Bad(path, absl::StrCat("context length must be > 0, got ", options.context_length));
  if (options.vocab_size <= 0) return Bad(path, absl::StrCat("vocabulary size must be > 0, got ", options.vocab_size));
  std::unique_ptr<TokenFile> t(new TokenFile());
  t->context_length_ = options.context_length;
  t->vocab_size_ = options.vocab_size;
  int64_t num_ids = 0;
  if (absl::EndsWith(path, ".npy")) {
    auto array = OpenNpy(path);
    if (!array.ok()) return array.status();
    const std::string& descr = array->descr;
    if (descr != "<i8" && descr != "<i4" && descr != "<u2" && descr != "<u4") {
      return Bad(path, absl::StrCat("holds ", descr, " values; token ids must be int64, int32, uint16 or uint32"));
    }
    t->file_ = array->file;
    t->data_ = array->data();
    t->item_size_ = static_cast<int64_t>(array->item_size);
    t->is_signed_ = descr[1] == 'i';
    num_ids = array->numel();
  } else {
    if (options.dtype != "uint16" && options.dtype != "uint32") {
      return Bad(path, absl::StrCat("dtype must be \"uint16\" or \"uint32\", got \"", options.dtype, "\""));
    }
    auto file = MappedFile::Open(path);
    if (!file.ok()) return file.status();
    t->file_ = *file;
    t->data_ = t->file_->data();
    t->item_size_ = options.dtype == "uint16" ? 2 : 4;
    const int64_t bytes = static_cast<int64_t>(t->file_->size());
    if (bytes % t->item_size_ != 0) {
      return Bad(path, absl::StrCat("its ", bytes, " bytes are not whole ", options.dtype, " ids"));
    }
    num_ids = bytes / t->item_size_;
  }
  t->num_sequences_ = num_ids / t->context_length_;
  if (t->num_sequences_ == 0) {
    return Bad(path, absl::StrCat("holds ", num_ids, " ids, fewer than one sequence of ", t->context_length_));
  }
  return t;
}

absl::StatusOr<torch::Tensor> TokenFile::Read(int64_t first, int64_t count) const {
  if (first < 0 || count < 0 || first > num_sequences_ - count) {
    return absl::OutOfRangeError(absl::StrCat("token file ", path(), ": sequences [", first, ", ", first + count,
                                              ") are outside its ", num_sequences_));
  }
  auto out = torch::empty({count, context_length_}, torch::kLong);
  const int64_t n = count * context_length_;
  const int64_t start = first * context_length_;
  const uint8_t* src = data_ + start * item_size_;
  int64_t* dst = out.data_ptr<int64_t>();
  int64_t bad = -1;
  switch (item_size_) {
    case 2: bad = Widen<uint16_t>(src, n, vocab_size_, dst); break;
    case 4: bad = is_signed_ ? Widen<int32_t>(src, n, vocab_size_, dst) : Widen<uint32_t>(src, n, vocab_size_, dst); break;
    default: bad = Widen<int64_t>(src, n, vocab_size_, dst); break;
  }
  if (bad >= 0) {
    return Bad(path(), absl::StrCat("id ", dst[bad], " at offset ", start + bad, " is outside the vocabulary of ",
                                    vocab_size_));
  }
  return out;
}

torch::Tensor ExcludedPositionMask(const torch::Tensor& ids, const std::vector<int64_t>& excluded_ids) {
  auto mask = torch::zeros(ids.sizes(), ids.options().dtype(torch::kBool));
  for (int64_t id : excluded_ids) mask.logical_or_(ids == id);
  return mask;
}

}  // namespace saegrid
