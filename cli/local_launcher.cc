#include "cli/local_launcher.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/distributed/rendezvous.h"

namespace saegrid::cli {
namespace {

std::vector<pid_t> g_children;

void ForwardSignal(int signal) {
  for (pid_t pid : g_children) {
    if (pid > 0) kill(pid, signal);
  }
}

int ExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int RunLocalRanks(int num_ranks, const std::vector<std::string>& args, bool args_set_threads,
                  double grace_seconds) {
  const int port = FindFreeLoopbackPort();
  if (port <= 0) {
    absl::FPrintF(stderr, "saegrid: cannot find a free loopback port for the rendezvous\n");
    return 1;
  }
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const int threads = std::max(1, static_cast<int>(cores) / num_ranks);
  std::fflush(stdout);
  std::fflush(stderr);
  g_children.assign(num_ranks, -1);
  for (int rank = 0; rank < num_ranks; ++rank) {
    std::vector<std::string> argv_strings = {"/proc/self/exe"};  // saegrid-train
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    for (const std::string& extra :
         {std::string("--rank"), absl::StrCat(rank), std::string("--world-size"), absl::StrCat(num_ranks),
          std::string("--rendezvous"), absl::StrCat("127.0.0.1:", port)}) {
      argv_strings.push_back(extra);
    }
    if (!args_set_threads) {
      argv_strings.push_back("--threads");
      argv_strings.push_back(absl::StrCat(threads));
    }
    const pid_t pid = fork();
    if (pid < 0) {
      absl::FPrintF(stderr, "saegrid: cannot start rank %d: fork failed\n", rank);
      ForwardSignal(SIGKILL);
      return 1;
    }
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);  // a rank must not outlive its launcher
      std::vector<char*> argv;
      for (auto& s : argv_strings) argv.push_back(s.data());
      argv.push_back(nullptr);
      execv("/proc/self/exe", argv.data());
      std::_Exit(127);
    }
    g_children[rank] = pid;
  }
  signal(SIGINT, ForwardSignal);
  signal(SIGTERM, ForwardSignal);

  int first_failure = 0;
  int remaining = num_ranks;
  std::chrono::steady_clock::time_point failed_at;
  bool terminated = false;
  while (remaining > 0) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      const auto it = std::find(g_children.begin(), g_children.end(), pid);
      if (it == g_children.end()) continue;
      *it = -1;
      --remaining;
      const int code = ExitCode(status);
      if (code != 0 && first_failure == 0) {
        first_failure = code;
        failed_at = std::chrono::steady_clock::now();
        if (code != 130) {
          absl::FPrintF(stderr, "saegrid: rank %d exited with code %d\n", it - g_children.begin(), code);
        }
      }
      continue;
    }
    if (first_failure != 0 && first_failure != 130) {
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - failed_at).count();
      if (!terminated && waited > grace_seconds) {
        ForwardSignal(SIGTERM);
        terminated = true;
      } else if (terminated && waited > grace_seconds + 10) {
        ForwardSignal(SIGKILL);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  return first_failure;
}

}  // namespace saegrid::cli
