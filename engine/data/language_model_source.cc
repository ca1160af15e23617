#include "engine/data/language_model_source.h"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <deque>
#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/status_macros.h"
#include "engine/lm/harvest.h"
#include "engine/lm/hf_checkpoint.h"
#include "engine/lm/language_model.h"
#include "engine/lm/token_file.h"
#include "engine/runtime.h"

namespace saegrid {
namespace {

constexpr uint64_t kSequenceOrderSalt = 0x5e9e9ce0;
constexpr uint64_t kRowOrderSalt = 0x0b0f5e7a;
// Groups produced ahead of the one the trainer reads from.
constexpr size_t kGroupsAhead = 1;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// One shuffle buffer's activations, rows already permuted.
struct GroupRows {
  int64_t epoch = 0;
  int64_t group = 0;
  torch::Tensor x;       // [rows, d] float32, CPU
  torch::Tensor tokens;  // [rows] int64
  int64_t rows() const { return x.size(0); }
};
using GroupOrError = absl::StatusOr<std::shared_ptr<const GroupRows>>;

class LanguageModelSource : public ActivationSource {
 public:
  LanguageModelSource(std::unique_ptr<LanguageModel> model, std::unique_ptr<TokenFile> tokens, Hookpoint hook,
                      const DataConfig& config, int replica, int num_replicas, torch::Device model_device,
                      bool pin_memory)
      : model_(std::move(model)), tokens_(std::move(tokens)), hook_(std::move(hook)),
        excluded_(config.language_model.exclude_token_ids),
        sequences_per_forward_(config.language_model.sequences_per_forward),
        model_threads_(static_cast<int>(config.language_model.model_threads)), seed_(config.seed),
        global_batch_(config.batch_size), replica_(replica), num_replicas_(num_replicas), pin_memory_(pin_memory),
        model_device_(model_device) {
    const int64_t n = tokens_->num_sequences();
    const int64_t context = tokens_->context_length();
    num_eval_ = HeldOutSequences(n, config.eval_fraction).count;
    num_train_ = n - num_eval_;
    group_sequences_ = config.language_model.shuffle_sequences > 0
                           ? config.language_model.shuffle_sequences
                           : std::max<int64_t>(1, (4 * global_batch_ + context - 1) / context);
    group_sequences_ = std::min(group_sequences_, num_train_);
    num_groups_ = (num_train_ + group_sequences_ - 1) / group_sequences_;
  }
  ~LanguageModelSource() override { StopProducer(); }

  int64_t d_in() const override { return model_->d_model(); }

  absl::StatusOr<Batch> NextBatch() override {
    const int64_t rows = global_batch_ / num_replicas_;
    const int64_t mine_begin = replica_ * rows, mine_end = mine_begin + rows;
    Batch batch;
    batch.x = torch::empty({rows, d_in()}, torch::TensorOptions().dtype(torch::kFloat).pinned_memory(pin_memory_));
    batch.tokens = torch::empty({rows}, torch::kLong);
    int64_t filled = 0;  // rows of the global batch taken so far
    int64_t empty_groups = 0;
    // Started by the first batch, not before: a resumed run seeks first.
    if (!producer_.joinable()) StartProducer(start_epoch_, start_group_);
    while (filled < global_batch_) {
      if (current_ == nullptr || position_ == current_->rows()) {
        SAEGRID_ASSIGN_OR_RETURN(current_, TakeGroup());
        if (current_->epoch != cursor_.epoch) cursor_ = {current_->epoch, 0};
        position_ = std::exchange(skip_, 0);
        // Any 2 G consecutive buffers hold a whole epoch: all of them empty means every training
        // position is excluded (fewer may be empty across an epoch boundary).
        if (current_->rows() == 0 && ++empty_groups >= 2 * num_groups_) {
          return absl::InvalidArgumentError(absl::StrCat(
              "data.language_model.exclude_token_ids: every position of ", tokens_->path(), " is excluded"));
        }
        continue;
      }
      empty_groups = 0;
      const int64_t take = std::min(global_batch_ - filled, current_->rows() - position_);
      // The part of [filled, filled + take) that is this replica's.
      const int64_t begin = std::max(filled, mine_begin), end = std::min(filled + take, mine_end);
      if (begin < end) {
        const int64_t from = position_ + (begin - filled);
        batch.x.narrow(0, begin - mine_begin, end - begin).copy_(current_->x.narrow(0, from, end - begin));
        batch.tokens.narrow(0, begin - mine_begin, end - begin).copy_(current_->tokens.narrow(0, from, end - begin));
      }
      filled += take;
      position_ += take;
      cursor_.offset += take;
    }
    batch.cursor_after = cursor_;
    return batch;
  }

  DataCursor cursor() const override { return cursor_; }

  absl::Status Restore(const DataCursor& cursor) override {
    if (cursor.epoch < 0 || cursor.offset < 0) {
      return absl::InvalidArgumentError(absl::StrCat("data cursor (", cursor.epoch, ", ", cursor.offset, ") is negative"));
    }
    const std::vector<int64_t> order = EpochOrder(cursor.epoch);
    int64_t start = 0;
    int64_t group = 0;
    for (; group < num_groups_; ++group) {
      SAEGRID_ASSIGN_OR_RETURN(const int64_t count, GroupRowCount(order, group));
      if (cursor.offset < start + count) break;
      start += count;
    }
    if (group == num_groups_ && cursor.offset > start) {
      return absl::OutOfRangeError(absl::StrCat("data cursor offset ", cursor.offset, " beyond the ", start,
                                                " rows of an epoch of ", tokens_->path(),
                                                ": the token file or the data settings changed since the checkpoint"));
    }
    StopProducer();
    current_.reset();
    position_ = 0;
    {
      absl::MutexLock lock(&mu_);
      sampled_groups_.clear();
    }
    if (group == num_groups_) {  // exactly at the end of the epoch
      cursor_ = {cursor.epoch + 1, 0};
      skip_ = 0;
      start_epoch_ = cursor.epoch + 1;
      start_group_ = 0;
    } else {
      cursor_ = cursor;
      skip_ = cursor.offset - start;
      start_epoch_ = cursor.epoch;
      start_group_ = group;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Batch> EvalSplit(int64_t max_rows) const override {
    std::vector<torch::Tensor> xs, ts;
    int64_t have = 0;
    for (int64_t first = num_train_; first < num_train_ + num_eval_ && have < max_rows; first += sequences_per_forward_) {
      const int64_t count = std::min(sequences_per_forward_, num_train_ + num_eval_ - first);
      SAEGRID_ASSIGN_OR_RETURN(torch::Tensor ids, tokens_->Read(first, count));
      SAEGRID_ASSIGN_OR_RETURN(KeptRows rows, ActivationsAtKeptPositions(*model_, hook_, ids, excluded_, device()));
      have += rows.x.size(0);
      xs.push_back(std::move(rows.x));
      ts.push_back(std::move(rows.tokens));
    }
    Batch batch;
    if (xs.empty()) {
      batch.x = torch::empty({0, d_in()}, torch::kFloat);
      batch.tokens = torch::empty({0}, torch::kLong);
      return batch;
    }
    const int64_t keep = std::min(have, max_rows);
    batch.x = torch::cat(xs).narrow(0, 0, keep);
    batch.tokens = torch::cat(ts).narrow(0, 0, keep);
    return batch;
  }

  absl::StatusOr<torch::Tensor> Sample(int64_t rows) const override {
    const std::vector<int64_t> order = EpochOrder(0);
    std::vector<torch::Tensor> xs;
    int64_t have = 0;
    for (int64_t group = 0; group < num_groups_ && have < rows; ++group) {
      SAEGRID_ASSIGN_OR_RETURN(auto g, MakeGroup(order, 0, group));
      have += g->rows();
      xs.push_back(g->x);
      // The producer starts with these buffers: it takes them instead of running the model again
      // (with its own thread count the rounding could differ, so only with the trainer's).
      if (model_threads_ == 0) {
        absl::MutexLock lock(&mu_);
        sampled_groups_[group] = g;
      }
    }
    if (have == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "data.language_model.exclude_token_ids: every position of ", tokens_->path(), " is excluded"));
    }
    return torch::cat(xs).narrow(0, 0, std::min(have, rows));
  }

  torch::Tensor ground_truth() const override { return {}; }

  SourceActivity activity() const override {
    absl::MutexLock lock(&mu_);
    return activity_;
  }

 private:
  std::vector<int64_t> EpochOrder(int64_t epoch) const {
    return SeededPermutation(num_train_, MixSeed(seed_, kSequenceOrderSalt, static_cast<uint64_t>(epoch)));
  }

  std::vector<int64_t> GroupSequences(const std::vector<int64_t>& order, int64_t group) const {
    const int64_t first = group * group_sequences_;
    const int64_t last = std::min(num_train_, first + group_sequences_);
    return std::vector<int64_t>(order.begin() + first, order.begin() + last);
  }

  absl::StatusOr<torch::Tensor> ReadSequences(const std::vector<int64_t>& ids) const {
    std::vector<torch::Tensor> rows;
    rows.reserve(ids.size());
    for (int64_t id : ids) {
      SAEGRID_ASSIGN_OR_RETURN(torch::Tensor row, tokens_->Read(id, 1));
      rows.push_back(std::move(row));
    }
    return torch::cat(rows);
  }

  absl::StatusOr<int64_t> GroupRowCount(const std::vector<int64_t>& order, int64_t group) const {
    const std::vector<int64_t> ids = GroupSequences(order, group);
    const int64_t all = static_cast<int64_t>(ids.size()) * tokens_->context_length();
    if (excluded_.empty()) return all;
    SAEGRID_ASSIGN_OR_RETURN(torch::Tensor tokens, ReadSequences(ids));
    return all - ExcludedPositionMask(tokens, excluded_).sum().item<int64_t>();
  }

  torch::Device device() const { return model_device_; }

  // `stopping` (optional): checked between model batches, so that a stopped producer does not
  // finish a buffer nobody will read (CANCELLED).
  absl::StatusOr<std::shared_ptr<const GroupRows>> MakeGroup(const std::vector<int64_t>& order, int64_t epoch,
                                                             int64_t group,
                                                             const std::atomic<bool>* stopping = nullptr) const {
    SAEGRID_ASSIGN_OR_RETURN(torch::Tensor ids, ReadSequences(GroupSequences(order, group)));
    std::vector<torch::Tensor> xs, ts;
    for (int64_t first = 0; first < ids.size(0); first += sequences_per_forward_) {
      if (stopping != nullptr && stopping->load()) return absl::CancelledError("the producer was stopped");
      const torch::Tensor batch = ids.narrow(0, first, std::min(sequences_per_forward_, ids.size(0) - first));
      SAEGRID_ASSIGN_OR_RETURN(KeptRows rows, ActivationsAtKeptPositions(*model_, hook_, batch, excluded_, device()));
      xs.push_back(std::move(rows.x));
      ts.push_back(std::move(rows.tokens));
    }
    auto out = std::make_shared<GroupRows>();
    out->epoch = epoch;
    out->group = group;
    const torch::Tensor x = torch::cat(xs), t = torch::cat(ts);
    const std::vector<int64_t> perm = SeededPermutation(
        x.size(0), MixSeed(seed_ ^ kRowOrderSalt, static_cast<uint64_t>(epoch), static_cast<uint64_t>(group)));
    const torch::Tensor index = torch::tensor(perm, torch::kLong);
    out->x = x.index_select(0, index);
    out->tokens = t.index_select(0, index);
    return std::shared_ptr<const GroupRows>(std::move(out));
  }

  void StartProducer(int64_t epoch, int64_t group) {
    {
      absl::MutexLock lock(&mu_);
      stop_ = false;
      stopping_.store(false);
      error_ = absl::OkStatus();
      ready_.clear();
    }
    producer_ = std::thread([this, epoch, group] { Produce(epoch, group); });
  }

  void StopProducer() {
    if (!producer_.joinable()) return;
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    stopping_.store(true);
    producer_.join();
  }

  // Makes groups in order from (epoch, group) on, kGroupsAhead ahead of the trainer, until
  // stopped or an error (which the trainer receives once the groups made before it are taken).
  void Produce(int64_t epoch, int64_t group) {
    // This thread's OpenMP team. LibTorch also records the count process-wide, for threads that
    // start later; the trainer's thread, already running, keeps its own (with OpenMP, the
    // CPU build's threading).
    if (model_threads_ > 0) at::set_num_threads(model_threads_);
    std::vector<int64_t> order = EpochOrder(epoch);
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        auto has_room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || ready_.size() < kGroupsAhead; };
        mu_.Await(absl::Condition(&has_room));
        if (stop_) return;
      }
      const auto start = std::chrono::steady_clock::now();
      GroupOrError made = absl::InternalError("no group");
      std::shared_ptr<const GroupRows> sampled;
      if (epoch == 0) {
        absl::MutexLock lock(&mu_);
        auto it = sampled_groups_.find(group);
        if (it != sampled_groups_.end()) {
          sampled = std::move(it->second);
          sampled_groups_.erase(it);
        }
      }
      const bool reused = sampled != nullptr;
      try {
        made = reused ? GroupOrError(std::move(sampled)) : MakeGroup(order, epoch, group, &stopping_);
      } catch (const std::exception& e) {
        made = StatusFromException(e);
      }
      {
        absl::MutexLock lock(&mu_);
        activity_.producer_busy_seconds += SecondsSince(start);
        if (stop_) return;
        if (!made.ok()) {
          error_ = made.status();
          return;
        }
        if (!reused) activity_.rows_produced += (*made)->rows();
        ready_.push_back(*std::move(made));
      }
      if (++group == num_groups_) {
        group = 0;
        order = EpochOrder(++epoch);
      }
    }
  }

  GroupOrError TakeGroup() {
    const auto start = std::chrono::steady_clock::now();
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !ready_.empty() || !error_.ok(); };
    mu_.Await(absl::Condition(&ready));
    activity_.consumer_wait_seconds += SecondsSince(start);
    if (ready_.empty()) return error_;
    std::shared_ptr<const GroupRows> group = std::move(ready_.front());
    ready_.pop_front();
    return group;
  }

  const std::unique_ptr<LanguageModel> model_;
  const std::unique_ptr<TokenFile> tokens_;
  const Hookpoint hook_;
  const std::vector<int64_t> excluded_;
  const int64_t sequences_per_forward_;
  const int model_threads_;
  const uint64_t seed_;
  const int64_t global_batch_;
  const int replica_, num_replicas_;
  const bool pin_memory_;
  const torch::Device model_device_;
  int64_t num_train_ = 0, num_eval_ = 0;
  int64_t group_sequences_ = 1, num_groups_ = 1;

  // The trainer's thread only.
  DataCursor cursor_;
  std::shared_ptr<const GroupRows> current_;
  int64_t position_ = 0;  // rows of current_ consumed
  int64_t skip_ = 0;      // rows of the next group to skip (a restored cursor inside a group)
  int64_t start_epoch_ = 0, start_group_ = 0;  // where the producer starts

  std::thread producer_;
  std::atomic<bool> stopping_{false};  // stop_, readable without the lock between model batches
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);  // why the producer stopped, if it failed
  std::deque<std::shared_ptr<const GroupRows>> ready_ ABSL_GUARDED_BY(mu_);
  // Epoch 0's first buffers, made by Sample (the trainer's initialisation), by group.
  mutable std::map<int64_t, std::shared_ptr<const GroupRows>> sampled_groups_ ABSL_GUARDED_BY(mu_);
  SourceActivity activity_ ABSL_GUARDED_BY(mu_);
};

absl::Status FieldError(const std::string& field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("data.language_model.", field, ": ", message));
}

}  // namespace

SequenceRange HeldOutSequences(int64_t num_sequences, double eval_fraction) {
  const int64_t count =
      eval_fraction > 0 && num_sequences > 1
          ? std::clamp<int64_t>(static_cast<int64_t>(std::ceil(eval_fraction * num_sequences)), 1, num_sequences - 1)
          : 0;
  return {num_sequences - count, count};
}

absl::StatusOr<LanguageModelData> OpenLanguageModelData(const LanguageModelDataConfig& c, torch::Device device) {
  if (c.model_path.empty()) return FieldError("model_path", "is required");
  if (c.tokens_path.empty()) return FieldError("tokens_path", "is required with model_path");
  if (c.hookpoint.empty()) return FieldError("hookpoint", "is required with model_path");
  if (c.context_length <= 0) return FieldError("context_length", "must be > 0");
  if (c.sequences_per_forward <= 0) return FieldError("sequences_per_forward", "must be > 0");
  RandomWeights random{c.random_weights, c.random_weights_seed, c.randomize_embeddings};
  auto model = LoadLanguageModel(c.model_path, device, &random);
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat("data.language_model.model_path ", c.model_path, ": ", model.status().message()));
  }
  auto hook = ParseHookpoint(c.hookpoint, (*model)->num_layers());
  if (!hook.ok()) return FieldError("hookpoint", hook.status().message());
  if ((*model)->max_context() > 0 && c.context_length > (*model)->max_context()) {
    return FieldError("context_length", absl::StrCat(c.context_length, " is longer than the model's ",
                                                     (*model)->max_context(), " positions"));
  }
  TokenFileOptions token_options;
  token_options.path = c.tokens_path;
  token_options.dtype = c.token_dtype;
  token_options.context_length = c.context_length;
  token_options.vocab_size = (*model)->vocab_size();
  auto tokens = TokenFile::Open(token_options);
  if (!tokens.ok()) {
    return absl::Status(tokens.status().code(),
                        absl::StrCat("data.language_model.tokens_path: ", tokens.status().message()));
  }
  if ((*tokens)->num_sequences() < 1) return FieldError("tokens_path", "holds no whole sequence");
  return LanguageModelData{*std::move(model), *std::move(tokens), *std::move(hook)};
}

absl::StatusOr<std::unique_ptr<ActivationSource>> OpenLanguageModelSource(const DataConfig& config, int replica,
                                                                         int num_replicas, torch::Device model_device,
                                                                         bool pin_memory) {
  if (num_replicas <= 0 || replica < 0 || replica >= num_replicas || config.batch_size % num_replicas != 0) {
    return absl::InvalidArgumentError(absl::StrCat("data: replica ", replica, " of ", num_replicas,
                                                   " cannot split data.batch_size ", config.batch_size));
  }
  SAEGRID_ASSIGN_OR_RETURN(LanguageModelData opened, OpenLanguageModelData(config.language_model, model_device));
  return std::unique_ptr<ActivationSource>(new LanguageModelSource(std::move(opened.model), std::move(opened.tokens),
                                                                   std::move(opened.hook), config, replica,
                                                                   num_replicas, model_device, pin_memory));
}

}  // namespace saegrid
