// saegrid-train: the training program. `saegrid train ARGS` execs `saegrid-train ARGS`, and the
// worker runs it for each rank, so that only this binary loads LibTorch.
#include "cli/train_command.h"
#include "engine/runtime.h"

int main(int argc, char** argv) {
  saegrid::ReexecIfBlasMisdetected(argv);
  return saegrid::cli::RunTrainCommand(argc - 1, argv + 1);
}
