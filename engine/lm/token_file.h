// Token ids a language model reads to make activations: a flat binary file of uint16 or uint32
// ids (the nanoGPT and sparsify convention), or a .npy array of integer ids, memory-mapped and
// read as [-1, context_length] sequences (a trailing partial sequence is dropped). Ids are
// checked against the vocabulary as they are read, so that opening a file of billions of tokens
// costs nothing: an id out of range is an error naming the file and the id's offset.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/mapped_file.h"

namespace saegrid {

struct TokenFileOptions {
  std::string path;
  // A flat binary file's ids: "uint16" (the default; vocabularies up to 65536) or "uint32". A
  // .npy file's header says its own type (int64, int32, uint16 or uint32).
  std::string dtype = "uint16";
  int64_t context_length = 0;  // tokens per sequence, > 0
  int64_t vocab_size = 0;      // ids must lie in [0, vocab_size)
};

class TokenFile {
 public:
  // Errors name the file: missing, empty, a size that is not whole ids, fewer ids than one
  // sequence, a .npy header that is not integer ids, a bad dtype, context or vocabulary size.
  static absl::StatusOr<std::unique_ptr<TokenFile>> Open(const TokenFileOptions& options);

  int64_t num_sequences() const { return num_sequences_; }
  int64_t context_length() const { return context_length_; }
  const std::string& path() const { return file_->path(); }

  // Sequences [first, first + count) as int64 [count, context_length]. OUT_OF_RANGE for rows past
  // the end; INVALID_ARGUMENT naming the file and offset (in ids from the start of the data) for
  // an id outside the vocabulary.
  absl::StatusOr<torch::Tensor> Read(int64_t first, int64_t count) const;

 private:
  TokenFile() = default;

  std::shared_ptr<const MappedFile> file_;
  const uint8_t* data_ = nullptr;  // the first id
  int64_t item_size_ = 0;
  bool is_signed_ = false;
  int64_t context_length_ = 0;
  int64_t vocab_size_ = 0;
  int64_t num_sequences_ = 0;
};

// [count, context] bool: true where the id is one of `excluded_ids` (BOS and other special
// tokens, whose positions dominate some latents and are left out of the training activations).
torch::Tensor ExcludedPositionMask(const torch::Tensor& ids, const std::vector<int64_t>& excluded_ids);

}  // namespace saegrid
