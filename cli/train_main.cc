// saegrid-train: the training program. `saegrid train ARGS` execs `saegrid-train ARGS` (and
// `saegrid harvest|eval ARGS` execs `saegrid-train harvest|eval ARGS`), and the worker runs it for
// each rank, so that only this binary loads LibTorch.
#include <string>

#include "cli/eval_command.h"
#include "cli/harvest_command.h"
#include "cli/train_command.h"
#include "engine/runtime.h"

int main(int argc, char** argv) {
  saegrid::ReexecIfBlasMisdetected(argv);
  if (argc > 1 && std::string(argv[1]) == "harvest") return saegrid::cli::RunHarvestCommand(argc - 2, argv + 2);
  if (argc > 1 && std::string(argv[1]) == "eval") return saegrid::cli::RunEvalCommand(argc - 2, argv + 2);
  return saegrid::cli::RunTrainCommand(argc - 1, argv + 1);
}
