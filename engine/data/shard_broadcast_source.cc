#include "engine/data/shard_broadcast_source.h"

#include <torch/torch.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace saegrid {
namespace {

constexpr int kRoot = 0;

class ShardBroadcastSource : public ActivationSource {
 public:
  ShardBroadcastSource(std::unique_ptr<ActivationSource> source, Communicator* shards, int64_t d, int64_t rows)
      : source_(std::move(source)), shards_(shards), d_(d), rows_(rows) {}

  int64_t d_in() const override { return d_; }

  absl::StatusOr<Batch> NextBatch() override {
    // [made, has_tokens, epoch, offset]: the peers learn of a failure on shard 0 here.
    torch::Tensor header = torch::zeros({4}, torch::kLong);
    absl::StatusOr<Batch> made = absl::InternalError("not shard 0");
    if (leader()) {
      made = source_->NextBatch();
      if (made.ok()) {
        header[0] = 1;
        header[1] = made->tokens.defined() ? 1 : 0;
        header[2] = made->cursor_after.epoch;
        header[3] = made->cursor_after.offset;
      }
    }
    SAEGRID_ASSIGN_OR_RETURN(header, Share(header));
    const auto h = header.to(torch::kCPU);
    if (h[0].item<int64_t>() == 0) {
      if (leader()) return made.status();
      return absl::UnavailableError("shard 0 of this replica could not make the training batch (its log has the cause)");
    }
    Batch batch;
    batch.cursor_after = {h[2].item<int64_t>(), h[3].item<int64_t>()};
    SAEGRID_ASSIGN_OR_RETURN(batch.x, Share(leader() ? made->x : torch::empty({rows_, d_}, torch::kFloat)));
    if (h[1].item<int64_t>() != 0) {
      SAEGRID_ASSIGN_OR_RETURN(batch.tokens, Share(leader() ? made->tokens : torch::empty({rows_}, torch::kLong)));
    }
    cursor_ = batch.cursor_after;
    return batch;
  }

  DataCursor cursor() const override { return cursor_; }

  absl::Status Restore(const DataCursor& cursor) override {
    absl::Status restored = leader() ? source_->Restore(cursor) : absl::OkStatus();
    torch::Tensor ok = torch::full({1}, restored.ok() ? 1 : 0, torch::kLong);
    SAEGRID_ASSIGN_OR_RETURN(ok, Share(ok));
    if (!restored.ok()) return restored;
    if (ok.to(torch::kCPU)[0].item<int64_t>() == 0) {
      return absl::UnavailableError("shard 0 of this replica could not seek its data to the checkpoint's cursor (its log has the cause)");
    }
    cursor_ = cursor;
    return absl::OkStatus();
  }

  absl::StatusOr<Batch> EvalSplit(int64_t max_rows) const override {
    if (!leader()) return absl::FailedPreconditionError("the held-out split is read on shard 0 of a replica only");
    return source_->EvalSplit(max_rows);
  }

  absl::StatusOr<torch::Tensor> Sample(int64_t rows) const override {
    torch::Tensor size = torch::zeros({1}, torch::kLong);
    absl::StatusOr<torch::Tensor> sample = absl::InternalError("not shard 0");
    if (leader()) {
      sample = source_->Sample(rows);
      if (sample.ok()) size[0] = sample->size(0);
    }
    SAEGRID_ASSIGN_OR_RETURN(size, Share(size));
    const int64_t n = size.to(torch::kCPU)[0].item<int64_t>();
    if (n == 0) {
      if (leader()) return sample.ok() ? absl::InvalidArgumentError("the data sample is empty") : sample.status();
      return absl::UnavailableError("shard 0 of this replica could not read the data sample (its log has the cause)");
    }
    return Share(leader() ? sample->contiguous() : torch::empty({n, d_}, torch::kFloat));
  }

  absl::StatusOr<torch::Tensor> LocalSample(int64_t rows) const override {
    if (!leader()) return absl::FailedPreconditionError("the data sample is read on shard 0 of a replica only");
    return source_->Sample(rows);
  }

  torch::Tensor ground_truth() const override { return leader() ? source_->ground_truth() : torch::Tensor(); }
  SourceActivity activity() const override { return leader() ? source_->activity() : SourceActivity{}; }

 private:
  bool leader() const { return shards_->rank() == kRoot; }

  // Shard 0's `tensor` on every shard, on the group's device.
  absl::StatusOr<torch::Tensor> Share(const torch::Tensor& tensor) const {
    torch::Tensor t = tensor.to(shards_->device()).contiguous();
    SAEGRID_RETURN_IF_ERROR(shards_->Broadcast(t, kRoot));
    return t;
  }

  const std::unique_ptr<ActivationSource> source_;
  Communicator* const shards_;
  const int64_t d_;
  const int64_t rows_;
  DataCursor cursor_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ActivationSource>> ShareAcrossShards(std::unique_ptr<ActivationSource> source,
                                                                    Communicator* shards, int64_t rows_per_batch) {
  const bool leader = shards->rank() == kRoot;
  if (!leader && source != nullptr) return absl::InternalError("ShareAcrossShards: only shard 0 holds the source");
  if (shards->size() == 1) {
    if (source == nullptr) return absl::InternalError("ShareAcrossShards: no source");
    return source;
  }
  // The width, or 0 when shard 0 could not open its source.
  torch::Tensor d = torch::full({1}, source != nullptr ? source->d_in() : 0, torch::kLong).to(shards->device());
  SAEGRID_RETURN_IF_ERROR(shards->Broadcast(d, kRoot));
  const int64_t width = d.to(torch::kCPU)[0].item<int64_t>();
  if (width == 0) {
    return absl::UnavailableError(leader ? "shard 0 has no data source to share"
                                         : "shard 0 of this replica could not open the data source (its log has the cause)");
  }
  return std::unique_ptr<ActivationSource>(new ShardBroadcastSource(std::move(source), shards, width, rows_per_batch));
}

}  // namespace saegrid
