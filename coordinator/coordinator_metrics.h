// What the coordinator exports on /metrics: jobs and workers by state, scheduling wait,
// restarts, heartbeat misses, stored checkpoint bytes, and every live (or recently ended) job's
// training figures as last reported, so that a dashboard keeps a job's curve across worker
// restarts. Per-job series are dropped an hour after the job ends.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "saegrid/v1/job.pb.h"

namespace saegrid::coordinator {

class CoordinatorMetrics {
 public:
  explicit CoordinatorMetrics(prometheus::Registry& registry);

  void JobScheduled(double wait_seconds) { scheduling_wait_.Observe(wait_seconds); }
  void JobRestarted(v1::FailureReason reason);
  void HeartbeatMissed() { heartbeat_misses_.Increment(); }
  void CheckpointStored(int64_t bytes) { checkpoints_stored_.Increment(); checkpoint_bytes_stored_.Increment(static_cast<double>(bytes)); }

  // Called with the whole state every tick.
  void Refresh(const std::map<std::string, v1::Job>& jobs, const std::map<std::string, int>& workers_by_state,
               const std::map<std::string, const v1::Evaluation*>& evaluations, absl::Time now);

 private:
  struct JobSeries {
    std::vector<prometheus::Gauge*> gauges;  // in kJobFigures order
  };
  prometheus::Family<prometheus::Gauge>& jobs_;
  prometheus::Family<prometheus::Gauge>& workers_;
  prometheus::Histogram& scheduling_wait_;
  prometheus::Family<prometheus::Counter>& restarts_;
  prometheus::Counter& heartbeat_misses_;
  prometheus::Counter& checkpoints_stored_;
  prometheus::Counter& checkpoint_bytes_stored_;
  std::vector<prometheus::Family<prometheus::Gauge>*> job_figures_;
  std::map<std::string, JobSeries> job_series_;
};

}  // namespace saegrid::coordinator
