#include "coordinator/checkpoint_catalog.h"

namespace saegrid::coordinator {

void CheckpointCatalog::Put(StoredCheckpoint checkpoint) {
  const std::string job_id = checkpoint.info.job_id();
  const int64_t step = checkpoint.info.step();
  by_job_[job_id][step] = std::move(checkpoint);
}

const StoredCheckpoint* CheckpointCatalog::NewestGood(const std::string& job_id) const {
  auto it = by_job_.find(job_id);
  if (it == by_job_.end()) return nullptr;
  for (auto c = it->second.rbegin(); c != it->second.rend(); ++c) {
    if (!c->second.info.bad()) return &c->second;
  }
  return nullptr;
}

const StoredCheckpoint* CheckpointCatalog::Find(const std::string& job_id, int64_t step) const {
  auto it = by_job_.find(job_id);
  if (it == by_job_.end()) return nullptr;
  auto c = it->second.find(step);
  return c == it->second.end() ? nullptr : &c->second;
}

std::vector<v1::CheckpointInfo> CheckpointCatalog::List(const std::string& job_id) const {
  std::vector<v1::CheckpointInfo> out;
  auto it = by_job_.find(job_id);
  if (it == by_job_.end()) return out;
  for (const auto& [step, c] : it->second) out.push_back(c.info);
  return out;
}

}  // namespace saegrid::coordinator
