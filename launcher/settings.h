// terrarun's options: one typed struct, parsed in one place (ParseCommandLine).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace terra::launcher {

enum class Mode { kAuto, kEager, kTrace, kCoexec };

struct HostSlots {
  std::string host;
  int slots = 1;
};

struct LaunchSettings {
  int num_ranks = 1;
  bool num_ranks_given = false;
  std::vector<HostSlots> hosts;  // non-empty: hand the job to mpirun
  std::string hostfile;
  Mode mode = Mode::kAuto;
  bool debug = false;
  bool report = false;  // rank 0 prints its tracing report at exit; --debug sets it unless eager
  std::string dot;      // absolute path rank 0 writes the TraceGraph to as DOT; empty: none
  bool prefix_output = true;
  std::string python;       // interpreter for .py programs; empty: the one terra was built for
  std::string master_addr;  // empty: 127.0.0.1 locally, this host's name under mpirun
  int master_port = 0;      // 0: a free port
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::milliseconds heartbeat_timeout{10000};
  std::chrono::milliseconds kill_grace{3000};  // SIGTERM, then SIGKILL after this
  bool verbose = false;
  std::string program;             // script.py or an executable
  std::vector<std::string> args;   // the program's own arguments

  bool uses_mpirun() const { return !hosts.empty() || !hostfile.empty(); }
};

struct ParseResult {
  enum class Action { kRun, kHelp, kVersion, kError };
  Action action = Action::kRun;
  LaunchSettings settings;
  std::string error;  // for kError: what is wrong and what to do
};

// argv[0] is the program name. Options end at the first non-option argument
// (the program) or at "--"; everything after belongs to the program.
ParseResult ParseCommandLine(const std::vector<std::string>& argv);

std::string HelpText();
const char* ModeName(Mode mode);

}  // namespace terra::launcher
