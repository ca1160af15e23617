// The job state machine: which transitions are legal, and the event each one leaves in the job's
// history. Pure functions over saegrid.v1 messages; the coordinator persists what they produce.
//
//   PENDING -> STARTING -> RUNNING -> SUCCEEDED
//      ^          |           |
//      |          +-----+-----+--> CANCELLING -> CANCELLED
//      |                |
//   RESTARTING <--------+--> FAILED            (and PENDING/RESTARTING -> CANCELLED | FAILED)
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "saegrid/v1/job.pb.h"

namespace saegrid::coordinator {

bool IsTerminal(v1::JobState state);
// STARTING, RUNNING or CANCELLING: a gang of ranks exists (or is being started).
bool HasLiveAttempt(v1::JobState state);
// "RUNNING" for JOB_STATE_RUNNING.
std::string StateName(v1::JobState state);
bool CanTransition(v1::JobState from, v1::JobState to);

google::protobuf::Timestamp ToProto(absl::Time t);
absl::Time FromProto(const google::protobuf::Timestamp& t);

// An event of `job` at `now` (from its current state to `to`; equal states for a note).
v1::JobEvent MakeEvent(const v1::Job& job, v1::JobState to, v1::FailureReason reason, const std::string& message,
                       absl::Time now);

// Moves `job` to `to` and appends the event to `events`. The reason describes the new state (the
// events keep the history of earlier ones). INTERNAL when the transition is not legal, leaving
// `job` unchanged: a bug, never a client's fault.
absl::Status Transition(v1::Job& job, v1::JobState to, v1::FailureReason reason, const std::string& message,
                        absl::Time now, std::vector<v1::JobEvent>* events);

// The current attempt (null when the job has none).
const v1::Attempt* CurrentAttempt(const v1::Job& job);
v1::Attempt* MutableCurrentAttempt(v1::Job& job);

}  // namespace saegrid::coordinator
