// Token accounting across a job's attempts. For attempt a, S_a is the token count it resumed from
// (its checkpoint's, 0 from scratch) and L_a the highest count it is known to have reached (its
// progress reports, its uploaded checkpoints, its final result). Then
//   trained   = tokens_consumed = sum_a (L_a - S_a)
//   recomputed = sum_a lost_tokens_a,   lost_tokens_a = L_a - S_{a+1}   (set when a+1 starts)
// and trained = final + recomputed holds exactly, with final = L of the last attempt. The loss is
// measured against the checkpoint the next attempt actually resumes from, not against the
// newest checkpoint at teardown time (which may turn out bad).
#pragma once

#include <cstdint>

#include "saegrid/v1/job.pb.h"

namespace saegrid::coordinator {

// A new attempt is about to start from `start_tokens`: closes the books of the previous attempt
// (its lost_tokens) and initialises the new one's S and L. Call before appending it to `job`.
void OpenAttemptBooks(v1::Job& job, v1::Attempt& next, int64_t start_tokens);

// The current attempt reached `tokens` (a progress report, a stored checkpoint, a result).
// Counts never go down; tokens_consumed is recomputed.
void RecordTokensReached(v1::Job& job, int64_t tokens);

// The tokens of the current attempt that a restart from `resume_tokens` would recompute (for
// teardown messages; OpenAttemptBooks sets the real figure).
int64_t TokensAtRisk(const v1::Job& job, int64_t resume_tokens);

// sum_a (L_a - S_a).
int64_t TokensConsumed(const v1::Job& job);
// sum_a lost_tokens_a.
int64_t TokensRecomputed(const v1::Job& job);

}  // namespace saegrid::coordinator
