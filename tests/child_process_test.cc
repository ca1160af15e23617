// A rank's process as the worker sees it: how it ended is named (a signal by its name, not as the
// shell's 128 + N), its output goes to the log, and its environment is what the worker set.
#include "worker/child_process.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <thread>

#include "tests/process_support.h"

namespace saegrid::worker {
namespace {

using ::testing::HasSubstr;

ExitStatus WaitFor(ChildProcess& child) {
  for (int i = 0; i < 200; ++i) {
    if (auto status = child.Poll()) return *status;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ADD_FAILURE() << "the child did not end";
  return {};
}

TEST(ChildProcess, AKilledChildIsNamedByItsSignal) {
  testing::TempDir dir;
  auto child = ChildProcess::Start({"/bin/sleep", "30"}, dir / "log", {});
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_FALSE(child->Poll().has_value());
  child->Signal(SIGKILL);
  const ExitStatus status = WaitFor(*child);
  EXPECT_TRUE(status.signaled);
  EXPECT_EQ(status.signal, SIGKILL);
  EXPECT_EQ(status.ShellCode(), 137);
  EXPECT_EQ(status.Describe(), "killed by signal SIGKILL");
}

TEST(ChildProcess, AnExitCodeOutputAndEnvironmentReachTheWorker) {
  testing::TempDir dir;
  auto child = ChildProcess::Start({"/bin/sh", "-c", "echo \"rank says $SAEGRID_TEST_VALUE\"; exit 3"}, dir / "log",
                                   {{"SAEGRID_TEST_VALUE", "hello"}});
  ASSERT_TRUE(child.ok()) << child.status();
  const ExitStatus status = WaitFor(*child);
  EXPECT_FALSE(status.signaled);
  EXPECT_EQ(status.code, 3);
  EXPECT_EQ(status.Describe(), "exit code 3");
  EXPECT_THAT(testing::ReadFile(dir / "log"), HasSubstr("rank says hello"));
}

TEST(ChildProcess, AProgramThatDoesNotExistIsAnError) {
  testing::TempDir dir;
  auto child = ChildProcess::Start({"/nonexistent/saegrid-train"}, dir / "log", {});
  if (child.ok()) {
    // Started, then failed to exec: it must end with a failure, not hang.
    const ExitStatus status = WaitFor(*child);
    EXPECT_TRUE(status.signaled || status.code != 0);
  } else {
    EXPECT_THAT(std::string(child.status().message()), HasSubstr("/nonexistent/saegrid-train"));
  }
}

}  // namespace
}  // namespace saegrid::worker
