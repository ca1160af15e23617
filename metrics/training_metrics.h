// Training figures of the ranks a worker runs, labelled job_id and rank (series are removed when
// a rank ends, so cardinality stays bounded by what runs). Fed from each rank's
// --metrics-jsonl lines (saegrid.v1.RankEvent).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "saegrid/v1/rank_event.pb.h"

namespace saegrid::metrics {

class TrainingMetrics {
 public:
  explicit TrainingMetrics(prometheus::Registry& registry);

  // The worker's own figures: ranks running, and ranks ended by outcome.
  void RankStarted() { ranks_running_.Increment(); }
  void RankEnded(const std::string& outcome);

  // The series of one rank of one job; removed from the registry when destroyed.
  class Rank {
   public:
    Rank(TrainingMetrics* owner, const std::string& job_id, int rank, int64_t start_tokens);
    ~Rank();
    // One training step of this rank.
    void OnStep(const v1::TrainingStep& step);
    // A checkpoint this rank wrote.
    void OnCheckpoint(const v1::CheckpointWritten& checkpoint);

   private:
    // Adds the series to `family` and remembers to remove it when the rank ends.
    template <typename T, typename... Args>
    T* Track(prometheus::Family<T>& family, const prometheus::Labels& labels, Args&&... args) {
      T* metric = &family.Add(labels, std::forward<Args>(args)...);
      removals_.push_back([&family, metric] { family.Remove(metric); });
      return metric;
    }

    std::vector<std::function<void()>> removals_;
    bool leader_;
    int64_t tokens_seen_;
    prometheus::Gauge *fvu_ = nullptr, *mse_ = nullptr, *l0_ = nullptr, *auxk_ = nullptr, *loss_ = nullptr,
                      *dead_fraction_ = nullptr, *dead_ = nullptr, *lr_ = nullptr, *step_ = nullptr,
                      *tokens_per_second_ = nullptr;
    prometheus::Counter *tokens_, *overflow_ = nullptr, *truncated_ = nullptr, *checkpoints_ = nullptr, *checkpoint_bytes_ = nullptr;
    prometheus::Histogram *step_seconds_, *allgather_, *allreduce_, *data_wait_, *checkpoint_seconds_ = nullptr;
  };

 private:
  friend class Rank;
  prometheus::Family<prometheus::Gauge>&fvu_, &mse_, &l0_, &auxk_, &loss_, &dead_fraction_, &dead_, &lr_, &step_,
      &tokens_per_second_;
  prometheus::Family<prometheus::Counter>&tokens_, &overflow_, &truncated_, &checkpoints_, &checkpoint_bytes_;
  prometheus::Family<prometheus::Histogram>&step_seconds_, &collective_seconds_, &checkpoint_seconds_, &data_wait_seconds_;
  prometheus::Gauge& ranks_running_;
  prometheus::Family<prometheus::Counter>& rank_results_;
};

}  // namespace saegrid::metrics
