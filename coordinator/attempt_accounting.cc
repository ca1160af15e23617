#include "coordinator/attempt_accounting.h"

#include <algorithm>

namespace saegrid::coordinator {

void OpenAttemptBooks(v1::Job& job, v1::Attempt& next, int64_t start_tokens) {
  if (job.attempts_size() > 0) {
    v1::Attempt& previous = *job.mutable_attempts(job.attempts_size() - 1);
    // S_{a+1} <= L_a by construction (a resumes from a checkpoint of an earlier or this attempt,
    // and a stored checkpoint raises L); the clamp only guards against a record from before this
    // rule existed.
    previous.set_last_tokens(std::max(previous.last_tokens(), start_tokens));
    previous.set_lost_tokens(previous.last_tokens() - start_tokens);
  }
  next.set_start_tokens(start_tokens);
  next.set_last_tokens(start_tokens);
  next.set_lost_tokens(0);
  job.set_tokens_consumed(TokensConsumed(job));
}

void RecordTokensReached(v1::Job& job, int64_t tokens) {
  if (job.attempts_size() == 0) return;
  v1::Attempt& current = *job.mutable_attempts(job.attempts_size() - 1);
  current.set_last_tokens(std::max(current.last_tokens(), tokens));
  job.set_tokens_consumed(TokensConsumed(job));
}

int64_t TokensAtRisk(const v1::Job& job, int64_t resume_tokens) {
  if (job.attempts_size() == 0) return 0;
  return std::max<int64_t>(0, job.attempts(job.attempts_size() - 1).last_tokens() - resume_tokens);
}

int64_t TokensConsumed(const v1::Job& job) {
  int64_t total = 0;
  for (const auto& a : job.attempts()) total += a.last_tokens() - a.start_tokens();
  return total;
}

int64_t TokensRecomputed(const v1::Job& job) {
  int64_t total = 0;
  for (const auto& a : job.attempts()) total += a.lost_tokens();
  return total;
}

}  // namespace saegrid::coordinator
