// Launch mechanism 1: every rank on this host, children of terrarun.
#include <sys/stat.h>
#include <unistd.h>

#include <iostream>

#include "launcher/job.h"
#include "launcher/ompi_server.h"
#include "launcher/supervisor.h"
#include "runtime/base/check.h"

namespace terra::launcher {
namespace {

// A .py program must exist before we start N interpreters to say it does not.
void CheckProgram(const LaunchSettings& settings) {
  const std::string& program = settings.program;
  bool has_slash = program.find('/') != std::string::npos;
  if (program.size() > 3 && program.compare(program.size() - 3, 3, ".py") == 0) {
    struct stat info {};
    TERRA_CHECK(::stat(program.c_str(), &info) == 0,
                "script '", program, "' not found (relative paths are taken from ",
                "the current directory)");
    TERRA_CHECK(S_ISREG(info.st_mode), "'", program, "' is not a regular file");
  } else if (has_slash) {
    TERRA_CHECK(::access(program.c_str(), X_OK) == 0, "'", program,
                "' is not an executable file (to run a Python script, name a .py file)");
  }
}

}  // namespace

int LaunchLocal(const LaunchSettings& settings) {
  CheckProgram(settings);
  // Declared before the supervisor, so it is stopped after every rank is gone.
  std::unique_ptr<OmpiServer> ompi_server = OmpiServer::StartForJob(settings);
  std::string addr = settings.master_addr.empty() ? "127.0.0.1" : settings.master_addr;
  Job job(settings, settings.master_addr.empty() ? "127.0.0.1" : "0.0.0.0", addr);
  Supervisor supervisor(SupervisorOptions{settings.kill_grace, settings.verbose});
  job.WatchRanks(&supervisor);

  std::vector<std::string> base_env = job.BaseEnvironment();
  AddOpenMpiEnvironment(ompi_server.get(), &base_env);
  std::vector<ChildSpec> children;
  for (int rank = 0; rank < settings.num_ranks; ++rank) {
    ChildSpec spec;
    spec.label = StrCat("rank ", rank);
    spec.rank = rank;
    spec.argv = job.ProgramArgv();
    spec.env = base_env;
    SetEnv(&spec.env, "RANK", std::to_string(rank));
    SetEnv(&spec.env, "LOCAL_RANK", std::to_string(rank));
    SetEnv(&spec.env, "LOCAL_WORLD_SIZE", std::to_string(settings.num_ranks));
    SetEnv(&spec.env, "GROUP_RANK", "0");
    if (settings.prefix_output && !settings.debug) spec.output_prefix = StrCat("[", rank, "] ");
    children.push_back(std::move(spec));
  }
  if (settings.verbose) {
    std::cerr << "terrarun: starting " << settings.num_ranks << " rank(s); control plane at "
              << job.master_addr() << ":" << job.master_port() << "\n";
  }
  supervisor.Start(std::move(children));
  return supervisor.Run();
}

}  // namespace terra::launcher
