// The checkpoints the coordinator holds, per job, ordered by step. In memory only: the
// coordinator writes each change to the Store first and then applies it here.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "coordinator/store.h"

namespace saegrid::coordinator {

class CheckpointCatalog {
 public:
  // Adds `checkpoint`, replacing one of the same job and step.
  void Put(StoredCheckpoint checkpoint);
  // The newest checkpoint of `job_id` not marked bad, or null.
  const StoredCheckpoint* NewestGood(const std::string& job_id) const;
  // The checkpoint of `job_id` at `step`, or null.
  const StoredCheckpoint* Find(const std::string& job_id, int64_t step) const;
  // Every checkpoint of `job_id`, by step.
  std::vector<v1::CheckpointInfo> List(const std::string& job_id) const;

 private:
  std::map<std::string, std::map<int64_t, StoredCheckpoint>> by_job_;  // job id -> step -> checkpoint
};

}  // namespace saegrid::coordinator
