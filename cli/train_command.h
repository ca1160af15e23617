// `saegrid train`: trains one SAE locally from a job specification file.
#pragma once

namespace saegrid::cli {

// Exit codes: 0 trained, 2 bad usage or configuration, 1 training or I/O failure,
// 3 lost a peer rank (or the rendezvous), 130 interrupted (a final checkpoint was written).
int RunTrainCommand(int argc, char** argv);

}  // namespace saegrid::cli
