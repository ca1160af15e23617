// `saegrid train --local-ranks N`: starts N ranks of one gang on this machine, as child processes
// of this binary (saegrid-train) on a free loopback port, and waits for them.
#pragma once

#include <string>
#include <vector>

namespace saegrid::cli {

// Runs this executable N times with `args` plus "--rank i --world-size N --rendezvous
// 127.0.0.1:PORT" and, unless args set --threads, "--threads cores/N". SIGINT/SIGTERM are passed
// on. When a rank fails, the others get `grace_seconds` to fail on their own (they notice the
// lost peer), then are terminated. Returns the first failing rank's exit code, or 0.
int RunLocalRanks(int num_ranks, const std::vector<std::string>& args, bool args_set_threads,
                  double grace_seconds);

}  // namespace saegrid::cli
