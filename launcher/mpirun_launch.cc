// Launch mechanism 2: several hosts, through Open MPI's mpirun. terrarun keeps
// the control plane on this host and supervises mpirun; mpirun starts
// "terrarun --exec-rank program args" on every host, which maps Open MPI's
// rank variables to the torchrun names and execs the program in place (so an
// MPI program stays the process mpirun started).
#include <netdb.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

#include "launcher/job.h"
#include "launcher/supervisor.h"
#include "runtime/base/check.h"

namespace terra::launcher {
namespace {

void CheckResolvable(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &result);
  if (result != nullptr) ::freeaddrinfo(result);
  TERRA_CHECK(rc == 0, "host '", host, "' cannot be resolved (", ::gai_strerror(rc),
              "): check the name in -H/--hostfile");
}

// Host names from an Open MPI hostfile ("name slots=N ..." lines, # comments).
std::vector<std::string> HostfileHosts(const std::string& path) {
  std::ifstream in(path);
  TERRA_CHECK(in.good(), "hostfile '", path, "' cannot be read");
  std::vector<std::string> hosts;
  std::string line;
  while (std::getline(in, line)) {
    line = line.substr(0, line.find('#'));
    std::istringstream words(line);
    std::string host;
    if (words >> host) hosts.push_back(host);
  }
  TERRA_CHECK(!hosts.empty(), "hostfile '", path, "' names no host");
  return hosts;
}

std::string ThisHostName() {
  char name[256] = {};
  ::gethostname(name, sizeof(name) - 1);
  return name;
}

std::string FindMpirun() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    std::string candidate = dir + "/mpirun";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  TERRA_CHECK(false, "-H/--hostfile hand the job to Open MPI's mpirun, which is not on PATH: ",
              "install Open MPI (scripts/install_deps.sh does) or run without -H");
  return {};
}

}  // namespace

int LaunchWithMpirun(const LaunchSettings& settings, const std::string& self_path) {
  std::vector<std::string> hosts;
  if (!settings.hostfile.empty()) {
    hosts = HostfileHosts(settings.hostfile);
  } else {
    for (const auto& h : settings.hosts) hosts.push_back(h.host);
  }
  for (const auto& host : hosts) CheckResolvable(host);
  std::string mpirun = FindMpirun();

  std::string addr = settings.master_addr.empty() ? ThisHostName() : settings.master_addr;
  Job job(settings, "0.0.0.0", addr);
  Supervisor supervisor(SupervisorOptions{settings.kill_grace, settings.verbose});
  job.WatchRanks(&supervisor);

  ChildSpec spec;
  spec.label = "mpirun";
  spec.env = job.BaseEnvironment();
  spec.argv = {mpirun, "-np", std::to_string(settings.num_ranks), "--oversubscribe"};
  if (::geteuid() == 0) spec.argv.push_back("--allow-run-as-root");
  if (!settings.hostfile.empty()) {
    spec.argv.insert(spec.argv.end(), {"--hostfile", settings.hostfile});
  } else {
    std::string list;
    for (const auto& h : settings.hosts) {
      list += (list.empty() ? "" : ",") + h.host + ":" + std::to_string(h.slots);
    }
    spec.argv.insert(spec.argv.end(), {"-H", list});
  }
  // Fail fast on an unreachable host instead of waiting on ssh.
  spec.argv.insert(spec.argv.end(), {"--mca", "plm_rsh_args", "-o BatchMode=yes -o ConnectTimeout=10"});
  if (settings.prefix_output) spec.argv.push_back("--tag-output");
  for (const char* name : {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", kEnvSecret, kEnvJobId,
                           "TERRA_LAUNCHER", "TERRA_MODE", "TERRA_DEBUG", "TERRA_REPORT", "TERRA_DOT",
                           "TERRA_HEARTBEAT_INTERVAL_MS", "PYTHONUNBUFFERED"}) {
    spec.argv.insert(spec.argv.end(), {"-x", name});
  }
  spec.argv.push_back(self_path);
  spec.argv.push_back("--exec-rank");
  std::vector<std::string> program = job.ProgramArgv();
  spec.argv.insert(spec.argv.end(), program.begin(), program.end());

  if (settings.verbose) {
    std::cerr << "terrarun: handing " << settings.num_ranks << " rank(s) to " << mpirun
              << "; control plane at " << job.master_addr() << ":" << job.master_port() << "\n";
  }
  supervisor.Start({std::move(spec)});
  return supervisor.Run();
}

int ExecRank(const std::vector<std::string>& argv) {
  TERRA_CHECK(!argv.empty(), "--exec-rank needs a program");
  auto copy = [](const char* from, const char* to) {
    const char* value = std::getenv(from);
    if (value != nullptr) ::setenv(to, value, 1);
  };
  copy("OMPI_COMM_WORLD_RANK", "RANK");
  copy("OMPI_COMM_WORLD_SIZE", "WORLD_SIZE");
  copy("OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK");
  copy("OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE");
  copy("OMPI_COMM_WORLD_NODE_RANK", "GROUP_RANK");
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  ::execvp(args[0], args.data());
  TERRA_CHECK(false, "cannot run '", argv[0], "': ", std::strerror(errno));
  return 127;
}

}  // namespace terra::launcher
