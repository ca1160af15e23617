#include "engine/data/activation_source.h"

#include <torch/torch.h>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/checkpoint.h"
#include "engine/data/language_model_source.h"
#include "engine/data/synthetic.h"
#include "engine/runtime.h"
#include "nlohmann/json.hpp"

namespace saegrid {
namespace fs = std::filesystem;
namespace {

bool IsShardFile(const fs::path& p) {
  const std::string name = p.filename().string();
  return (absl::EndsWith(name, ".npy") && !absl::EndsWith(name, ".tokens.npy")) ||
         absl::EndsWith(name, ".safetensors");
}

absl::StatusOr<std::vector<ShardPath>> ReadManifest(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("data manifest " + path + ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  const auto j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("data manifest " + path + ": not valid JSON");
  if (!j.is_object() || !j.contains("shards") || !j["shards"].is_array()) {
    return absl::InvalidArgumentError("data manifest " + path + ": needs a \"shards\" array");
  }
  const fs::path base = fs::path(path).parent_path();
  std::vector<ShardPath> out;
  for (size_t i = 0; i < j["shards"].size(); ++i) {
    const auto& item = j["shards"][i];
    ShardPath shard;
    if (item.is_string()) {
      shard.path = item.get<std::string>();
    } else if (item.is_object() && item.contains("path") && item["path"].is_string()) {
      shard.path = item["path"].get<std::string>();
      if (item.contains("tokens")) {
        if (!item["tokens"].is_string()) {
          return absl::InvalidArgumentError(absl::StrCat("data manifest ", path, ": shards[", i, "].tokens is not a string"));
        }
        shard.tokens_path = (base / item["tokens"].get<std::string>()).string();
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "data manifest ", path, ": shards[", i, "] must be a path or {\"path\": ..., \"tokens\": ...}"));
    }
    shard.path = (base / shard.path).string();
    out.push_back(shard);
  }
  if (out.empty()) return absl::InvalidArgumentError("data manifest " + path + ": \"shards\" is empty");
  return out;
}

// Background prefetch over an ActivationStream. The stream is touched only by the worker thread
// while it runs; Restore stops it first.
class PrefetchingSource : public ActivationSource {
 public:
  PrefetchingSource(std::unique_ptr<ActivationStream> stream, int64_t batch_size,
                    int64_t prefetch, torch::Tensor ground_truth)
      : stream_(std::move(stream)), batch_size_(batch_size), prefetch_(prefetch),
        ground_truth_(std::move(ground_truth)) {
    consumed_ = stream_->cursor();
    Start();
  }
  ~PrefetchingSource() override { Stop(); }

  int64_t d_in() const override { return stream_->d(); }

  absl::StatusOr<Batch> NextBatch() override {
    if (prefetch_ == 0) {
      auto batch = stream_->Next(batch_size_);
      if (batch.ok()) consumed_ = batch->cursor_after;
      return batch;
    }
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(+[](std::deque<absl::StatusOr<Batch>>* q) { return !q->empty(); }, &queue_));
    absl::StatusOr<Batch> batch = std::move(queue_.front());
    queue_.pop_front();
    if (batch.ok()) consumed_ = batch->cursor_after;
    return batch;
  }

  DataCursor cursor() const override {
    absl::MutexLock lock(&mu_);
    return consumed_;
  }

  absl::Status Restore(const DataCursor& cursor) override {
    Stop();
    auto status = stream_->Seek(cursor);
    {
      absl::MutexLock lock(&mu_);
      queue_.clear();
      if (status.ok()) consumed_ = cursor;
    }
    Start();
    return status;
  }

  absl::StatusOr<Batch> EvalSplit(int64_t max_rows) const override {
    return stream_->EvalRows(max_rows);
  }
  absl::StatusOr<torch::Tensor> Sample(int64_t rows) const override {
    return stream_->SampleRows(rows);
  }
  torch::Tensor ground_truth() const override { return ground_truth_; }

 private:
  void Start() {
    if (prefetch_ == 0) return;
    {
      absl::MutexLock lock(&mu_);
      stop_ = false;
    }
    worker_ = std::thread([this] { Run(); });
  }

  void Stop() {
    if (!worker_.joinable()) return;
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    worker_.join();
  }

  void Run() {
    // Reading rows is plain memory copies; keep LibTorch's pool out of this thread.
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        auto has_room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stop_ || static_cast<int64_t>(queue_.size()) < prefetch_;
        };
        mu_.Await(absl::Condition(&has_room));
        if (stop_) return;
      }
      // An exception would end the process from this thread (std::terminate); the trainer
      // turns the status into the command's exit code instead (out of memory: 5).
      absl::StatusOr<Batch> batch = absl::InternalError("no batch");
      try {
        batch = stream_->Next(batch_size_);
      } catch (const std::exception& e) {
        batch = StatusFromException(e);
      }
      const bool failed = !batch.ok();
      absl::MutexLock lock(&mu_);
      queue_.push_back(std::move(batch));
      if (failed) return;  // the error reaches the trainer; nothing after it is valid
    }
  }

  std::unique_ptr<ActivationStream> stream_;
  const int64_t batch_size_;
  const int64_t prefetch_;
  const torch::Tensor ground_truth_;
  std::thread worker_;
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<absl::StatusOr<Batch>> queue_ ABSL_GUARDED_BY(mu_);
  DataCursor consumed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::vector<ShardPath>> ListShardPaths(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return absl::NotFoundError("data.path " + path + " does not exist");
  if (fs::is_directory(path, ec)) {
    std::vector<ShardPath> out;
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      if (entry.is_regular_file() && IsShardFile(entry.path())) out.push_back({entry.path().string(), ""});
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
    if (out.empty()) {
      return absl::InvalidArgumentError("data.path " + path + " holds no .npy or .safetensors shards");
    }
    return out;
  }
  if (absl::EndsWith(path, ".json")) return ReadManifest(path);
  return std::vector<ShardPath>{{path, ""}};
}

absl::StatusOr<std::unique_ptr<ActivationSource>> OpenActivationSource(const DataConfig& config,
                                                                      int replica,
                                                                      int num_replicas,
                                                                      bool pin_memory,
                                                                      torch::Device device) {
  if (config.uses_language_model()) {
    return OpenLanguageModelSource(config, replica, num_replicas, device, pin_memory);
  }
  std::vector<std::shared_ptr<ActivationShard>> shards;
  torch::Tensor ground_truth;
  if (config.use_synthetic) {
    SyntheticData data = GenerateSyntheticData(config.synthetic);
    shards.push_back(ActivationShard::InMemory("synthetic", data.samples));
    ground_truth = data.features;
  } else if (!config.decoder_rows.empty()) {
    // A meta-SAE learns a dictionary of another SAE's decoder directions, one row per example.
    auto sae = LoadPublishedSae(config.decoder_rows);
    if (!sae.ok()) return absl::Status(sae.status().code(), absl::StrCat("data.decoder_rows: ", sae.status().message()));
    shards.push_back(ActivationShard::InMemory("decoder_rows", sae->params.w_dec.contiguous()));
  } else {
    auto paths = ListShardPaths(config.path);
    if (!paths.ok()) return paths.status();
    for (const auto& p : *paths) {
      auto shard = ActivationShard::Open(p.path, p.tokens_path, config.dtype_override);
      if (!shard.ok()) return shard.status();
      shards.push_back(*std::move(shard));
    }
  }
  StreamOptions options;
  options.block_rows = config.block_rows;
  options.shuffle_buffer_blocks = config.shuffle_buffer_blocks;
  options.eval_fraction = config.eval_fraction;
  options.seed = config.seed;
  options.replica = replica;
  options.num_replicas = num_replicas;
  options.pin_memory = pin_memory;
  auto stream = ActivationStream::Create(std::move(shards), options);
  if (!stream.ok()) return stream.status();
  return std::unique_ptr<ActivationSource>(new PrefetchingSource(
      *std::move(stream), config.batch_size, config.prefetch_batches, ground_truth));
}

}  // namespace saegrid
