#include "engine/data/activation_stream.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace saegrid {
namespace {

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Fisher-Yates with mt19937_64 and a plain modulo: the same order on every standard library
// (std::shuffle and uniform_int_distribution are implementation-defined).
template <typename T>
void Shuffle(std::vector<T>& v, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng() % i]);
}

}  // namespace

uint64_t MixSeed(uint64_t a, uint64_t b, uint64_t c) {
  return SplitMix(SplitMix(SplitMix(a) ^ b) ^ c);
}

std::vector<int64_t> SeededPermutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  Shuffle(order, seed);
  return order;
}

absl::StatusOr<std::unique_ptr<ActivationStream>> ActivationStream::Create(
    std::vector<std::shared_ptr<ActivationShard>> shards, const StreamOptions& options) {
  if (shards.empty()) return absl::InvalidArgumentError("data: no activation shards");
  if (options.block_rows <= 0) return absl::InvalidArgumentError("data.block_rows must be > 0");
  if (options.shuffle_buffer_blocks <= 0) {
    return absl::InvalidArgumentError("data.shuffle_buffer_blocks must be > 0");
  }
  if (options.num_replicas <= 0 || options.replica < 0 || options.replica >= options.num_replicas) {
    return absl::InvalidArgumentError(absl::StrCat("data: replica ", options.replica,
                                                   " outside [0, ", options.num_replicas, ")"));
  }
  std::unique_ptr<ActivationStream> s(new ActivationStream());
  s->options_ = options;
  s->d_ = shards.front()->d();
  s->has_tokens_ = true;
  std::vector<Block> blocks;
  for (size_t i = 0; i < shards.size(); ++i) {
    if (shards[i]->d() != s->d_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "activation file ", shards[i]->path(), ": width ", shards[i]->d(), " differs from ",
          s->d_, " in ", shards.front()->path()));
    }
    s->has_tokens_ = s->has_tokens_ && shards[i]->has_tokens();
    for (int64_t b = 0; b < shards[i]->rows(); b += options.block_rows) {
      blocks.push_back({static_cast<int32_t>(i), b, std::min(options.block_rows, shards[i]->rows() - b)});
    }
  }
  s->shards_ = std::move(shards);
  Shuffle(blocks, MixSeed(options.seed, 0xe7a1));
  size_t num_eval = 0;
  if (options.eval_fraction > 0 && blocks.size() > 1) {
    num_eval = std::clamp<size_t>(static_cast<size_t>(std::ceil(options.eval_fraction * blocks.size())),
                                  1, blocks.size() - 1);
  }
  s->eval_blocks_.assign(blocks.begin(), blocks.begin() + num_eval);
  s->train_blocks_.assign(blocks.begin() + num_eval, blocks.end());
  // Keep the training blocks in file order so that an epoch's permutation depends only on the
  // seed, not on the eval draw's side effects.
  std::sort(s->train_blocks_.begin(), s->train_blocks_.end(), [](const Block& a, const Block& b) {
    return a.shard != b.shard ? a.shard < b.shard : a.begin < b.begin;
  });
  for (const auto& b : s->train_blocks_) s->train_rows_ += b.count;
  for (const auto& b : s->eval_blocks_) s->eval_rows_ += b.count;
  s->PlanEpoch(0);
  return s;
}

void ActivationStream::PlanEpoch(int64_t epoch) {
  std::vector<Block> order = train_blocks_;
  Shuffle(order, MixSeed(options_.seed, 0xb10c, static_cast<uint64_t>(epoch)));
  epoch_blocks_ = std::move(order);
  group_start_rows_.assign(1, 0);
  for (size_t b = 0; b < epoch_blocks_.size(); b += options_.shuffle_buffer_blocks) {
    int64_t rows = 0;
    for (size_t i = b; i < std::min(epoch_blocks_.size(), b + options_.shuffle_buffer_blocks); ++i) {
      rows += epoch_blocks_[i].count;
    }
    group_start_rows_.push_back(group_start_rows_.back() + rows);
  }
  epoch_ = epoch;
  offset_ = 0;
  LoadGroup(0);
}

void ActivationStream::LoadGroup(size_t group) {
  group_ = group;
  group_rows_.clear();
  const size_t first = group * options_.shuffle_buffer_blocks;
  const size_t last = std::min(epoch_blocks_.size(), first + options_.shuffle_buffer_blocks);
  for (size_t b = first; b < last; ++b) {
    for (int64_t r = 0; r < epoch_blocks_[b].count; ++r) {
      group_rows_.emplace_back(static_cast<int32_t>(b), epoch_blocks_[b].begin + r);
    }
  }
  Shuffle(group_rows_, MixSeed(options_.seed ^ 0x5eed5eedULL, static_cast<uint64_t>(epoch_), group));
}

absl::StatusOr<Batch> ActivationStream::Next(int64_t global_batch_size) {
  const int64_t replicas = options_.num_replicas;
  if (global_batch_size <= 0 || global_batch_size % replicas != 0) {
    return absl::InvalidArgumentError(absl::StrCat("data.batch_size ", global_batch_size,
                                                   " is not a positive multiple of the ", replicas,
                                                   " data-parallel replicas"));
  }
  const int64_t rows = global_batch_size / replicas;
  const int64_t mine_begin = options_.replica * rows;
  Batch batch;
  batch.x = torch::empty({rows, d_}, torch::TensorOptions().dtype(torch::kFloat).pinned_memory(options_.pin_memory));
  if (has_tokens_) batch.tokens = torch::empty({rows}, torch::kLong);
  float* out = batch.x.data_ptr<float>();
  int64_t* tokens = has_tokens_ ? batch.tokens.data_ptr<int64_t>() : nullptr;
  for (int64_t i = 0; i < global_batch_size; ++i) {
    if (offset_ == group_start_rows_.back()) PlanEpoch(epoch_ + 1);
    if (offset_ == group_start_rows_[group_ + 1]) LoadGroup(group_ + 1);
    ++offset_;
    const int64_t j = i - mine_begin;
    if (j < 0 || j >= rows) continue;  // another replica's row: only the order advances
    const auto& [block, row] = group_rows_[offset_ - 1 - group_start_rows_[group_]];
    const auto& shard = *shards_[epoch_blocks_[block].shard];
    auto st = shard.CopyRows(row, 1, out + j * d_);
    if (!st.ok()) return st;
    if (tokens != nullptr) tokens[j] = shard.TokenAt(row);
  }
  batch.cursor_after = cursor();
  return batch;
}

absl::Status ActivationStream::Seek(const DataCursor& cursor) {
  if (cursor.epoch < 0 || cursor.offset < 0) {
    return absl::InvalidArgumentError(absl::StrCat("data cursor (", cursor.epoch, ", ",
                                                   cursor.offset, ") is negative"));
  }
  PlanEpoch(cursor.epoch);
  if (cursor.offset > group_start_rows_.back()) {
    return absl::OutOfRangeError(absl::StrCat(
        "data cursor offset ", cursor.offset, " beyond the ", group_start_rows_.back(),
        " rows of an epoch: the data changed since the checkpoint was written"));
  }
  const auto it = std::upper_bound(group_start_rows_.begin(), group_start_rows_.end(), cursor.offset);
  const size_t group = std::min<size_t>(it - group_start_rows_.begin() - 1, group_start_rows_.size() - 2);
  LoadGroup(group);
  offset_ = cursor.offset;
  return absl::OkStatus();
}

absl::Status ActivationStream::CopyBlockRows(const std::vector<Block>& blocks, int64_t max_rows,
                                             Batch* out) const {
  int64_t total = 0;
  for (const auto& b : blocks) total += b.count;
  total = std::min(total, max_rows);
  out->x = torch::empty({total, d_}, torch::kFloat);
  if (has_tokens_) out->tokens = torch::empty({total}, torch::kLong);
  int64_t filled = 0;
  for (const auto& b : blocks) {
    if (filled == total) break;
    const int64_t take = std::min(b.count, total - filled);
    const auto& shard = *shards_[b.shard];
    auto st = shard.CopyRows(b.begin, take, out->x.data_ptr<float>() + filled * d_);
    if (!st.ok()) return st;
    if (has_tokens_) {
      int64_t* tokens = out->tokens.data_ptr<int64_t>() + filled;
      for (int64_t r = 0; r < take; ++r) tokens[r] = shard.TokenAt(b.begin + r);
    }
    filled += take;
  }
  return absl::OkStatus();
}

absl::StatusOr<Batch> ActivationStream::EvalRows(int64_t max_rows) const {
  Batch batch;
  auto st = CopyBlockRows(eval_blocks_, max_rows, &batch);
  if (!st.ok()) return st;
  return batch;
}

absl::StatusOr<torch::Tensor> ActivationStream::SampleRows(int64_t rows) const {
  std::vector<Block> order = train_blocks_;
  Shuffle(order, MixSeed(options_.seed, 0xb10c, 0));
  Batch batch;
  auto st = CopyBlockRows(order, rows, &batch);
  if (!st.ok()) return st;
  return batch.x;
}

}  // namespace saegrid
