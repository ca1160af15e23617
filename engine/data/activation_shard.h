// One shard of activations: [rows, d] in fp32, fp16, bf16 or fp64, memory-mapped from a .npy or
// .safetensors file (or held in memory for generated data), with optional token ids per row.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/mapped_file.h"

namespace saegrid {

enum class RowFormat { kF32, kF16, kBF16, kF64 };

class ActivationShard {
 public:
  // `dtype_override` "bf16" reads a uint16 .npy as bfloat16 bits; "" keeps the stored type.
  // Token ids: X.npy pairs with X.tokens.npy if it exists (or the explicit `tokens_path`);
  // a .safetensors shard holds "activations" [N, d] and optionally "tokens" [N].
  static absl::StatusOr<std::shared_ptr<ActivationShard>> Open(const std::string& path,
                                                               const std::string& tokens_path,
                                                               const std::string& dtype_override);
  static std::shared_ptr<ActivationShard> InMemory(std::string name, torch::Tensor rows);

  // Copies rows [begin, begin + count) as fp32 into `out` (count * d floats). Fails, naming the
  // file and row, if a value is NaN or Inf.
  absl::Status CopyRows(int64_t begin, int64_t count, float* out) const;
  // Token id of a row, or -1 when the shard has none.
  int64_t TokenAt(int64_t row) const;

  const std::string& path() const { return path_; }
  int64_t rows() const { return rows_; }
  int64_t d() const { return d_; }
  bool has_tokens() const { return tokens_data_ != nullptr; }

 private:
  absl::Status AttachTokens(const std::shared_ptr<const MappedFile>& file, const uint8_t* data,
                            int64_t count, int token_bytes, const std::string& where);

  std::string path_;
  int64_t rows_ = 0;
  int64_t d_ = 0;
  RowFormat format_ = RowFormat::kF32;
  std::shared_ptr<const MappedFile> file_;
  std::shared_ptr<const MappedFile> tokens_file_;
  torch::Tensor owned_;  // in-memory shards
  const uint8_t* data_ = nullptr;
  const uint8_t* tokens_data_ = nullptr;
  int token_bytes_ = 0;
};

}  // namespace saegrid
