// What every launch mechanism shares: the job's identity and secret, the
// control server, and the command and environment each rank runs with.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/control/server.h"
#include "launcher/settings.h"

namespace terra::launcher {

class Supervisor;

// Environment variables of the rank contract (docs/launcher.md).
inline constexpr const char* kEnvSecret = "TERRA_JOB_SECRET";
inline constexpr const char* kEnvJobId = "TERRA_JOB_ID";

class Job {
 public:
  // Starts the control server on bind_address. Throws terra::Error on failure.
  Job(const LaunchSettings& settings, const std::string& bind_address,
      const std::string& advertised_address);

  // Routes the server's lost-rank events to the supervisor. Call once, before
  // any rank starts.
  void WatchRanks(Supervisor* supervisor);

  // The program's argv: [python, -u, script.py, args...] or [program, args...].
  std::vector<std::string> ProgramArgv() const;

  // The current environment with the job's variables set; rank variables are
  // the launch mechanism's business.
  std::vector<std::string> BaseEnvironment() const;

  const std::string& master_addr() const { return master_addr_; }
  uint16_t master_port() const;

 private:
  const LaunchSettings& settings_;
  std::string secret_;
  std::string job_id_;
  std::string master_addr_;
  comm::control::ControlServer server_;
};

// Sets NAME=value in env, replacing an existing NAME.
void SetEnv(std::vector<std::string>* env, const std::string& name, const std::string& value);

// The interpreter .py programs run under.
std::string PythonInterpreter(const LaunchSettings& settings);

int LaunchLocal(const LaunchSettings& settings);
int LaunchWithMpirun(const LaunchSettings& settings, const std::string& self_path);

// Run by mpirun on every host ("terrarun --exec-rank program args..."): maps
// Open MPI's rank variables to the torchrun names and execs the program.
int ExecRank(const std::vector<std::string>& argv);

}  // namespace terra::launcher
