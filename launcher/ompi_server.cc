#include "launcher/ompi_server.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <thread>

#include "launcher/job.h"
#include "launcher/supervisor.h"

extern char** environ;

namespace terra::launcher {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::chrono::milliseconds kStartTimeout{5000};
constexpr std::chrono::milliseconds kStopGrace{1000};

std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

bool HasEnv(const std::vector<std::string>& env, const std::string& name) {
  std::string prefix = name + "=";
  for (const auto& entry : env) {
    if (entry.compare(0, prefix.size(), prefix) == 0) return true;
  }
  return false;
}

void SetEnvDefault(std::vector<std::string>* env, const std::string& name,
                   const std::string& value) {
  if (!HasEnv(*env, name)) SetEnv(env, name, value);
}

// fork + exec with stdout to /dev/null; the child's stderr stays terrarun's.
pid_t Spawn(const std::string& program, std::vector<std::string> argv) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  AddOpenMpiEnvironment(nullptr, &env);
  std::vector<char*> argv_c, envp;
  for (auto& a : argv) argv_c.push_back(a.data());
  argv_c.push_back(nullptr);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid != 0) return pid;
  ::setpgid(0, 0);  // a Ctrl-C on the terminal is terrarun's to forward, not this helper's
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (::getppid() != parent) ::_exit(127);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  int devnull = ::open("/dev/null", O_RDWR);
  ::dup2(devnull, STDIN_FILENO);
  ::dup2(devnull, STDOUT_FILENO);
  ::execve(program.c_str(), argv_c.data(), envp.data());
  ::_exit(127);
}

bool UriFileReady(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && info.st_size > 0;
}

}  // namespace

std::unique_ptr<OmpiServer> OmpiServer::StartForJob(const LaunchSettings& settings) {
  if (settings.num_ranks <= 1) return nullptr;
  std::string program = FindOnPath("ompi-server");
  if (program.empty()) {
    if (settings.verbose)
      std::cerr << "terrarun: no ompi-server on PATH: MPI collectives across ranks unavailable\n";
    return nullptr;
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/terrarun-ompi-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::cerr << "terrarun: warning: cannot create a directory for ompi-server: "
              << std::strerror(errno) << "\n";
    return nullptr;
  }
  std::string uri_file = pattern + "/uri";
  pid_t pid = Spawn(program, {"ompi-server", "--no-daemonize", "-r", uri_file});
  // From here on the destructor stops the process and removes the directory.
  std::unique_ptr<OmpiServer> server(new OmpiServer(pid, pattern));
  if (pid < 0) {
    std::cerr << "terrarun: warning: cannot fork ompi-server: " << std::strerror(errno) << "\n";
    return nullptr;
  }
  auto deadline = Clock::now() + kStartTimeout;
  int status = 0;
  while (!UriFileReady(uri_file)) {
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      server->pid_ = -1;
      std::cerr << "terrarun: warning: ompi-server " << DescribeWaitStatus(status)
                << " before writing its URI: MPI collectives across ranks unavailable\n";
      return nullptr;
    }
    if (Clock::now() > deadline) {
      std::cerr
          << "terrarun: warning: ompi-server wrote no URI file within 5 s: MPI collectives across "
             "ranks unavailable\n";
      return nullptr;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (settings.verbose)
    std::cerr << "terrarun: ompi-server (pid " << pid << ") at " << uri_file << "\n";
  return server;
}

OmpiServer::OmpiServer(pid_t pid, std::string directory)
    : pid_(pid), directory_(std::move(directory)), uri_file_(directory_ + "/uri") {}

OmpiServer::~OmpiServer() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    auto deadline = Clock::now() + kStopGrace;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  std::error_code ignored;
  std::filesystem::remove_all(directory_, ignored);
}

void AddOpenMpiEnvironment(const OmpiServer* server, std::vector<std::string>* env) {
  if (server != nullptr)
    SetEnvDefault(env, "OMPI_MCA_pmix_server_uri", "file:" + server->uri_file());
  SetEnvDefault(env, "OMPI_MCA_btl_tcp_if_include", "lo");
  SetEnvDefault(env, "OMPI_MCA_oob_tcp_if_include", "lo");
  SetEnvDefault(env, "OMPI_ALLOW_RUN_AS_ROOT", "1");
  SetEnvDefault(env, "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
}

}  // namespace terra::launcher
