// `saegrid-train` (what `saegrid train` runs): trains one SAE from a job specification, locally
// or as one rank of a gang.
#pragma once

namespace saegrid::cli {

// `argv` are the arguments after the program name. Returns (or, for one rank of a gang, exits
// with) a saegrid::TrainExitCode (base/exit_code.h). Allocation failures anywhere in setting up
// or training end with kOutOfMemory and one line "out of memory: ...", not an abort.
int RunTrainCommand(int argc, char** argv);

}  // namespace saegrid::cli
