// Supervisor: starts a job's child processes, forwards their output, forwards
// signals to them, and stops the whole job at the first failure.
//
// The protocol, step by step:
//  1. Start() forks every child into its own process group, with stdin from
//     /dev/null, stdout/stderr into pipes, and PR_SET_PDEATHSIG so that a
//     killed launcher takes its children along. An exec failure is reported
//     through a close-on-exec pipe as a launch error naming the program.
//  2. Run() loops on poll(): output lines go to the launcher's stdout/stderr
//     (prefixed per child when asked); SIGCHLD reaps children; SIGINT/SIGTERM
//     are forwarded to every child's process group; RankLost events (posted
//     from the control server's thread by ReportRankLost) are turned into
//     failures.
//  3. The first failure (a non-zero exit, a death by signal, a lost
//     heartbeat) is printed as one line naming the child and the cause; every
//     other child gets SIGTERM (and SIGCONT, for a stopped one), then SIGKILL
//     after kill_grace.
//  4. Run() returns when every child is reaped and its output drained: 0 if
//     all exited 0, else the first failure's exit code (128+signal for a
//     death by signal, kExitRankHung for a hung rank, 128+signal for an
//     interrupted job).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "comm/control/server.h"

namespace terra::launcher {

inline constexpr int kExitRankHung = 124;
inline constexpr int kExitLaunchError = 2;

struct ChildSpec {
  std::string label;                 // "rank 3", "mpirun"
  int64_t rank = -1;                 // the control-plane rank it answers for; -1: several/none
  std::vector<std::string> argv;     // argv[0] is looked up on PATH
  std::vector<std::string> env;      // complete environment, "NAME=value"
  std::string output_prefix;         // "" for none
};

struct SupervisorOptions {
  std::chrono::milliseconds kill_grace{3000};
  bool verbose = false;
};

class Supervisor {
 public:
  explicit Supervisor(SupervisorOptions options);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Forks and execs every child; throws terra::Error if one cannot be started
  // (after stopping those already started).
  void Start(std::vector<ChildSpec> children);

  // Runs until every child is gone; returns the job's exit code.
  int Run();

  // Thread-safe; may be called from the control server's I/O thread.
  void ReportRankLost(const comm::control::RankLostEvent& event);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// "exited with code 3", "was killed by signal 9 (SIGKILL)".
std::string DescribeWaitStatus(int wait_status);
int ExitCodeOfWaitStatus(int wait_status);

}  // namespace terra::launcher
