// saegrid: the command-line client. Subcommands live one per file. The service commands need
// no LibTorch, so this binary does not link it: `saegrid train` execs saegrid-train.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "base/exit_code.h"
#include "cli/job_commands.h"

namespace {

constexpr char kUsage[] =
    "usage: saegrid <command> [options]\n"
    "commands:\n"
    "  train     train an SAE locally from a job specification (saegrid train --help)\n"
    "  harvest   cache a language model's activations as shards (saegrid harvest --help)\n"
    "  eval      run the papers' evaluations on a checkpoint (saegrid eval --help)\n"
    "  submit    submit a job to the coordinator (FILE [--wait])\n"
    "  get       show a job (JOB [--events])\n"
    "  list      list jobs (--state, --label, --page-size, --all)\n"
    "  watch     stream a job's transitions and progress until it ends\n"
    "  cancel    cancel a job; its ranks write a final checkpoint (JOB [--grace S] [--wait])\n"
    "  download  download and unpack a checkpoint (JOB [--step N] -o DIR)\n"
    "  results   print a job's evaluation\n"
    "service options: --coordinator HOST:PORT (SAEGRID_COORDINATOR), --token-file FILE\n"
    "  (SAEGRID_CLIENT_TOKEN), --tls-ca FILE, --json\n"
    "exit codes: 0 ok; 1 job FAILED; 2 bad usage or request rejected; 3 coordinator unreachable;\n"
    "  4 not found; 5 not authenticated; 6 data loss (sha256); 7 job CANCELLED; 8 other error\n";

// Runs `saegrid-train [FIRST] ARGS` from this executable's directory in place of this process.
int ExecTrainer(int argc, char** argv, const char* first = nullptr) {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  const std::string trainer = ec ? std::string("saegrid-train") : (self.parent_path() / "saegrid-train").string();
  std::vector<char*> args = {const_cast<char*>(trainer.c_str())};
  if (first != nullptr) args.push_back(const_cast<char*>(first));
  for (int i = 0; i < argc; ++i) args.push_back(argv[i]);
  args.push_back(nullptr);
  std::fflush(stdout);
  ::execv(trainer.c_str(), args.data());
  absl::FPrintF(stderr, "saegrid train: cannot run %s: %s (saegrid-train is installed next to saegrid)\n", trainer,
                std::strerror(errno));
  return saegrid::ToInt(saegrid::TrainExitCode::kFailed);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    absl::FPrintF(stderr, "%s", kUsage);
    return 2;
  }
  const std::string command = argv[1];
  namespace cli = saegrid::cli;
  if (command == "train") return ExecTrainer(argc - 2, argv + 2);
  if (command == "harvest") return ExecTrainer(argc - 2, argv + 2, "harvest");
  if (command == "eval") return ExecTrainer(argc - 2, argv + 2, "eval");
  if (command == "submit") return cli::RunSubmitCommand(argc - 2, argv + 2);
  if (command == "get") return cli::RunGetCommand(argc - 2, argv + 2);
  if (command == "list") return cli::RunListCommand(argc - 2, argv + 2);
  if (command == "watch") return cli::RunWatchCommand(argc - 2, argv + 2);
  if (command == "cancel") return cli::RunCancelCommand(argc - 2, argv + 2);
  if (command == "download") return cli::RunDownloadCommand(argc - 2, argv + 2);
  if (command == "results") return cli::RunResultsCommand(argc - 2, argv + 2);
  if (command == "-h" || command == "--help" || command == "help") {
    absl::FPrintF(stdout, "%s", kUsage);
    return 0;
  }
  absl::FPrintF(stderr, "saegrid: unknown command '%s'\n%s", command, kUsage);
  return 2;
}
