// The exit codes of `saegrid-train` (`saegrid train`): the one list that the trainer command
// returns and that the worker maps to a RankOutcome. saegrid.v1.TrainExitCode
// (proto/saegrid/v1/rank_event.proto) carries the same numbers in the rank's metrics file;
// cli/metrics_log.cc static_asserts that the two agree.
#pragma once

namespace saegrid {

enum class TrainExitCode : int {
  kOk = 0,
  kFailed = 1,          // training or I/O error
  kInvalidConfig = 2,   // bad usage or configuration (a field, a missing data.path): retrying cannot help
  kPeerLost = 3,        // a collective lost a peer rank, or the rendezvous failed
  kRestoreFailed = 4,   // the checkpoint to resume from could not be restored
  kOutOfMemory = 5,     // an allocation failed (model, optimizer state or data too large)
  kStopped = 130,       // stopped by a signal (or by the gang) after a final checkpoint
};

inline constexpr int ToInt(TrainExitCode code) { return static_cast<int>(code); }

}  // namespace saegrid
