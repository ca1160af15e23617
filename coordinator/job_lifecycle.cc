#include "coordinator/job_lifecycle.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"

namespace saegrid::coordinator {

using google::protobuf::util::TimeUtil;

google::protobuf::Timestamp ToProto(absl::Time t) { return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t)); }
absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(t));
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED || state == v1::JOB_STATE_CANCELLED;
}

bool HasLiveAttempt(v1::JobState state) {
  return state == v1::JOB_STATE_STARTING || state == v1::JOB_STATE_RUNNING || state == v1::JOB_STATE_CANCELLING;
}

std::string StateName(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  constexpr size_t kPrefix = sizeof("JOB_STATE_") - 1;
  return name.size() > kPrefix ? name.substr(kPrefix) : name;
}

bool CanTransition(v1::JobState from, v1::JobState to) {
  using S = v1::JobState;
  switch (from) {
    case S::JOB_STATE_UNSPECIFIED: return to == S::JOB_STATE_PENDING;
    case S::JOB_STATE_PENDING:
      return to == S::JOB_STATE_STARTING || to == S::JOB_STATE_CANCELLED || to == S::JOB_STATE_FAILED;
    case S::JOB_STATE_STARTING:
    case S::JOB_STATE_RUNNING:
      return to == S::JOB_STATE_RUNNING || to == S::JOB_STATE_SUCCEEDED || to == S::JOB_STATE_FAILED ||
             to == S::JOB_STATE_RESTARTING || to == S::JOB_STATE_CANCELLING || to == S::JOB_STATE_CANCELLED;
    case S::JOB_STATE_RESTARTING:
      return to == S::JOB_STATE_PENDING || to == S::JOB_STATE_CANCELLED || to == S::JOB_STATE_FAILED;
    case S::JOB_STATE_CANCELLING:
      return to == S::JOB_STATE_CANCELLED || to == S::JOB_STATE_FAILED;
    default: return false;  // terminal states stay
  }
}

v1::JobEvent MakeEvent(const v1::Job& job, v1::JobState to, v1::FailureReason reason, const std::string& message,
                       absl::Time now) {
  v1::JobEvent e;
  e.set_job_id(job.job_id());
  *e.mutable_time() = ToProto(now);
  e.set_from_state(job.state());
  e.set_to_state(to);
  e.set_reason(reason);
  e.set_message(message);
  return e;
}

absl::Status Transition(v1::Job& job, v1::JobState to, v1::FailureReason reason, const std::string& message,
                        absl::Time now, std::vector<v1::JobEvent>* events) {
  if (!CanTransition(job.state(), to)) {
    return absl::InternalError(absl::StrCat("job ", job.job_id(), ": no transition from ", StateName(job.state()),
                                            " to ", StateName(to)));
  }
  events->push_back(MakeEvent(job, to, reason, message, now));
  job.set_state(to);
  job.set_message(message);
  job.set_failure_reason(reason);
  if (to != v1::JOB_STATE_PENDING) job.clear_pending_reason();
  if (IsTerminal(to)) *job.mutable_end_time() = ToProto(now);
  return absl::OkStatus();
}

const v1::Attempt* CurrentAttempt(const v1::Job& job) {
  return job.attempts_size() == 0 ? nullptr : &job.attempts(job.attempts_size() - 1);
}

v1::Attempt* MutableCurrentAttempt(v1::Job& job) {
  return job.attempts_size() == 0 ? nullptr : job.mutable_attempts(job.attempts_size() - 1);
}

}  // namespace saegrid::coordinator
