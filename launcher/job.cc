#include "launcher/job.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "launcher/supervisor.h"
#include "runtime/base/check.h"

extern char** environ;

namespace terra::launcher {
namespace {

std::string RandomHex(size_t bytes) {
  std::string raw(bytes, '\0');
  int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  TERRA_CHECK(fd >= 0, "terrarun: cannot open /dev/urandom for the job secret");
  size_t got = 0;
  while (got < bytes) {
    ssize_t n = ::read(fd, raw.data() + got, bytes - got);
    TERRA_CHECK(n > 0, "terrarun: cannot read /dev/urandom for the job secret");
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  static const char* kDigits = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : raw) {
    hex.push_back(kDigits[c >> 4]);
    hex.push_back(kDigits[c & 15]);
  }
  return hex;
}

bool IsPythonScript(const std::string& program) {
  return program.size() > 3 && program.compare(program.size() - 3, 3, ".py") == 0;
}

comm::control::ServerOptions MakeServerOptions(const LaunchSettings& settings,
                                               const std::string& bind_address,
                                               const std::string& secret) {
  comm::control::ServerOptions options;
  options.bind_address = bind_address;
  options.port = static_cast<uint16_t>(settings.master_port);
  options.secret = secret;
  options.heartbeat_timeout = settings.heartbeat_timeout;
  return options;
}

}  // namespace

void SetEnv(std::vector<std::string>* env, const std::string& name, const std::string& value) {
  std::string prefix = name + "=";
  for (auto& entry : *env) {
    if (entry.compare(0, prefix.size(), prefix) == 0) {
      entry = prefix + value;
      return;
    }
  }
  env->push_back(prefix + value);
}

std::string PythonInterpreter(const LaunchSettings& settings) {
  if (!settings.python.empty()) return settings.python;
  if (const char* env = std::getenv("TERRA_PYTHON")) return env;
  return TERRA_DEFAULT_PYTHON;
}

Job::Job(const LaunchSettings& settings, const std::string& bind_address,
         const std::string& advertised_address)
    : settings_(settings),
      secret_(RandomHex(16)),
      job_id_(RandomHex(6)),
      master_addr_(advertised_address),
      server_(MakeServerOptions(settings, bind_address, secret_)) {}

void Job::WatchRanks(Supervisor* supervisor) {
  server_.SetRankLostHandler(
      [supervisor](const comm::control::RankLostEvent& event) { supervisor->ReportRankLost(event); });
  server_.Start();
}

uint16_t Job::master_port() const { return server_.port(); }

std::vector<std::string> Job::ProgramArgv() const {
  std::vector<std::string> argv;
  if (IsPythonScript(settings_.program)) {
    // terra.run imports terra (joining the job, starting tracing) and then
    // runs the unmodified program as __main__.
    argv = {PythonInterpreter(settings_), "-u", "-m", "terra.run", settings_.program};
  } else {
    argv = {settings_.program};
  }
  argv.insert(argv.end(), settings_.args.begin(), settings_.args.end());
  return argv;
}

std::vector<std::string> Job::BaseEnvironment() const {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  SetEnv(&env, "MASTER_ADDR", master_addr_);
  SetEnv(&env, "MASTER_PORT", std::to_string(master_port()));
  SetEnv(&env, "WORLD_SIZE", std::to_string(settings_.num_ranks));
  SetEnv(&env, kEnvSecret, secret_);
  SetEnv(&env, kEnvJobId, job_id_);
  SetEnv(&env, "TERRA_LAUNCHER", "terrarun");
  SetEnv(&env, "TERRA_MODE", ModeName(settings_.mode));
  SetEnv(&env, "TERRA_DEBUG", settings_.debug ? "1" : "0");
  SetEnv(&env, "TERRA_REPORT", settings_.report ? "1" : "0");
  SetEnv(&env, "TERRA_DOT", settings_.dot);
  SetEnv(&env, "TERRA_HEARTBEAT_INTERVAL_MS", std::to_string(settings_.heartbeat_interval.count()));
  SetEnv(&env, "PYTHONUNBUFFERED", "1");
  return env;
}

}  // namespace terra::launcher
