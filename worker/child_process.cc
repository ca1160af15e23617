#include "worker/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace saegrid::worker {

absl::StatusOr<ChildProcess> ChildProcess::Start(const std::vector<std::string>& argv, const std::string& log_path,
                                                 const std::map<std::string, std::string>& env) {
  const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) return absl::InternalError(absl::StrCat("cannot open ", log_path, ": ", std::strerror(errno)));
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::setpgid(0, 0);
    // The daemon blocks signals for its sigwait thread; the rank must receive them.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::dup2(log, STDOUT_FILENO);
    ::dup2(log, STDERR_FILENO);
    for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
    ::execv(args[0], args.data());
    const std::string message = absl::StrCat("exec ", argv[0], ": ", std::strerror(errno), "\n");
    (void)!::write(STDERR_FILENO, message.data(), message.size());
    ::_exit(127);
  }
  ::close(log);
  ChildProcess child;
  child.pid_ = pid;
  return child;
}

std::string ExitStatus::Describe() const {
  if (!signaled) return absl::StrCat("exit code ", code);
  const char* abbrev = ::sigabbrev_np(signal);
  return abbrev != nullptr ? absl::StrCat("killed by signal SIG", abbrev) : absl::StrCat("killed by signal ", signal);
}

std::optional<ExitStatus> ChildProcess::Poll() {
  if (exit_ || pid_ < 0) return exit_;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    ExitStatus e;
    e.signaled = WIFSIGNALED(status);
    if (e.signaled) e.signal = WTERMSIG(status);
    else e.code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    exit_ = e;
  }
  return exit_;
}

void ChildProcess::Signal(int signal) {
  if (pid_ > 0 && !exit_) ::kill(pid_, signal);
}

}  // namespace saegrid::worker
