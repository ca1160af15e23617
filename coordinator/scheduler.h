// Gang scheduling as a pure function: which pending jobs start now, on which workers, and why the
// others wait. Priority first, then submission order (FIFO). A job starts only when its whole
// gang fits at once; a job that waits for busy workers keeps them for itself (later jobs of the
// same device do not overtake it), while a job no connected set of workers could ever run holds
// up nobody.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace saegrid::coordinator {

struct SchedulableWorker {
  std::string worker_id;
  std::string device_kind;  // "cpu" or "cuda"
  int gpu_count = 0;
  int64_t memory_bytes = 0;  // 0: unknown (fits any job)
  bool connected = false;
  bool idle = false;
};

struct SchedulableJob {
  std::string job_id;       // ids increase with submission
  int priority = 0;
  std::string device;       // "cpu" or "cuda"
  int64_t gang_size = 1;
  int64_t memory_per_rank = 0;  // the larger of the estimate and resources.min_memory_bytes
};

struct Placement {
  std::string job_id;
  std::vector<std::string> worker_ids;  // rank r runs on worker_ids[r]
};

struct SchedulePlan {
  std::vector<Placement> placements;
  std::map<std::string, std::string> pending_reasons;  // job id -> why it waits
};

SchedulePlan PlanSchedule(std::vector<SchedulableJob> pending, const std::vector<SchedulableWorker>& workers);

}  // namespace saegrid::coordinator
