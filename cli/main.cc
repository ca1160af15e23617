// saegrid: the command-line client. Subcommands live one per file.
#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "cli/train_command.h"

namespace {

constexpr char kUsage[] =
    "usage: saegrid <command> [options]\n"
    "commands:\n"
    "  train    train an SAE locally from a job specification (saegrid train --help)\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    absl::FPrintF(stderr, "%s", kUsage);
    return 2;
  }
  const std::string command = argv[1];
  if (command == "train") return saegrid::cli::RunTrainCommand(argc - 2, argv + 2);
  if (command == "-h" || command == "--help" || command == "help") {
    absl::FPrintF(stdout, "%s", kUsage);
    return 0;
  }
  absl::FPrintF(stderr, "saegrid: unknown command '%s'\n%s", command, kUsage);
  return 2;
}
