#include "coordinator/scheduler.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_format.h"

namespace saegrid::coordinator {

SchedulePlan PlanSchedule(std::vector<SchedulableJob> pending, const std::vector<SchedulableWorker>& workers) {
  std::stable_sort(pending.begin(), pending.end(), [](const SchedulableJob& a, const SchedulableJob& b) {
    if (a.priority != b.priority) return a.priority > b.priority;
    return a.job_id < b.job_id;
  });
  SchedulePlan plan;
  std::set<std::string> taken;                    // workers placed in this plan
  std::map<std::string, std::string> blocked_by;  // device -> the job that waits for it first
  for (const SchedulableJob& job : pending) {
    std::vector<std::string> idle;
    int64_t capable = 0, of_device = 0;
    for (const auto& w : workers) {
      if (!w.connected || w.device_kind != job.device || (job.device == "cuda" && w.gpu_count <= 0)) continue;
      ++of_device;
      if (w.memory_bytes > 0 && w.memory_bytes < job.memory_per_rank) continue;
      ++capable;
      if (w.idle && !taken.count(w.worker_id)) idle.push_back(w.worker_id);
    }
    // Memory is named only where it rules workers out; it is always part of the decision.
    const bool memory_matters = capable < of_device;
    const std::string needs = absl::StrFormat(
        "needs %d %s workers%s, %d idle of %d suitable", job.gang_size, job.device,
        memory_matters ? absl::StrFormat(" with %.1f GB", job.memory_per_rank / 1e9) : "", idle.size(), capable);
    if (capable < job.gang_size) {
      plan.pending_reasons[job.job_id] = needs;  // no connected set of workers could run it
    } else if (auto b = blocked_by.find(job.device); b != blocked_by.end()) {
      plan.pending_reasons[job.job_id] = absl::StrFormat(
          "queued behind %s (higher priority or earlier, also needs %s workers)", b->second, job.device);
    } else if (static_cast<int64_t>(idle.size()) >= job.gang_size) {
      idle.resize(job.gang_size);
      for (const auto& id : idle) taken.insert(id);
      plan.placements.push_back({job.job_id, std::move(idle)});
    } else {
      plan.pending_reasons[job.job_id] = needs;  // waits for busy workers: keep them for it
      blocked_by[job.device] = job.job_id;
    }
  }
  return plan;
}

}  // namespace saegrid::coordinator
