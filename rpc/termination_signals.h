// What the daemons' main() functions share beyond base/ (flags, durable files): termination
// signals taken with sigwait.
#pragma once

#include <signal.h>

#include <string>

namespace saegrid::rpc {

// Blocks SIGINT and SIGTERM in the calling thread and in every thread it starts afterwards, so
// that a daemon takes them with sigwait on the returned set. Call it first in main: gRPC starts
// threads as soon as credentials are made.
sigset_t BlockTerminationSignals();

}  // namespace saegrid::rpc
