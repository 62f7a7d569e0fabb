#include "launcher/settings.h"

#include <charconv>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "runtime/base/check.h"

namespace terra::launcher {
namespace {

// Parses a whole string as a positive int within [min, max]; nullopt otherwise.
std::optional<long> ParseInt(const std::string& text, long min, long max) {
  long value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || value < min || value > max) return std::nullopt;
  return value;
}

std::optional<double> ParseSeconds(const std::string& text) {
  try {
    size_t used = 0;
    double value = std::stod(text, &used);
    if (used != text.size() || !(value > 0) || value > 86400) return std::nullopt;
    return value;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::chrono::milliseconds ToMillis(double seconds) {
  return std::chrono::milliseconds(static_cast<long>(seconds * 1000.0));
}

// "a:2,b,c:4" -> hosts with slots (default 1).
bool ParseHostList(const std::string& text, std::vector<HostSlots>* hosts, std::string* error) {
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    HostSlots entry;
    auto colon = item.rfind(':');
    entry.host = item.substr(0, colon);
    if (colon != std::string::npos) {
      auto slots = ParseInt(item.substr(colon + 1), 1, 1 << 20);
      if (!slots) {
        *error = StrCat("bad slot count in '", item, "': expected host:slots with slots >= 1");
        return false;
      }
      entry.slots = static_cast<int>(*slots);
    }
    if (entry.host.empty()) {
      *error = StrCat("empty host name in '", text, "'");
      return false;
    }
    hosts->push_back(entry);
  }
  if (hosts->empty()) {
    *error = StrCat("no hosts in '", text, "': expected host:slots,host:slots,...");
    return false;
  }
  return true;
}

// Makes a --dot file name absolute (against this process's working directory,
// so ranks started elsewhere agree) and checks that its directory exists.
bool ResolveDotFile(const std::string& text, std::string* path, std::string* error) {
  namespace fs = std::filesystem;
  if (text.empty()) {
    *error = "--dot needs a file name, got an empty one";
    return false;
  }
  std::error_code ec;
  fs::path file = fs::absolute(text, ec);
  if (ec) {
    *error = StrCat("cannot make --dot '", text, "' an absolute path: ", ec.message());
    return false;
  }
  if (fs::is_directory(file, ec)) {
    *error =
        StrCat("--dot '", text, "' is a directory: give a file in it, like ", text, "/graph.dot");
    return false;
  }
  if (!fs::is_directory(file.parent_path(), ec)) {
    *error = StrCat("the directory of --dot '", text, "' (", file.parent_path().string(),
                    ") does not exist: create it or choose another file");
    return false;
  }
  *path = file.string();
  return true;
}

}  // namespace

const char* ModeName(Mode mode) {
  switch (mode) {
    case Mode::kAuto: return "auto";
    case Mode::kEager: return "eager";
    case Mode::kTrace: return "trace";
    case Mode::kCoexec: return "coexec";
  }
  return "?";
}

std::string HelpText() {
  return R"(usage: terrarun [options] program [program args...]

Runs program once per rank. A program ending in .py runs under the Python
interpreter that has terra installed; anything else is executed directly.
Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT (the torchrun names) and TERRA_* variables. If a rank fails, dies
or stops answering heartbeats, terrarun stops the others and exits with that
rank's exit code.

options:
  -np N, -n N, --nproc N   number of ranks (default 1; more ranks than cores is fine)
  -H, --hosts H:S,...      run on these hosts with S slots each, through Open MPI's mpirun
  --hostfile FILE          an Open MPI hostfile, through mpirun
  --mode MODE              eager | trace | auto | coexec (default auto): what Terra does with the
                           program; coexec (experimental, CPU, any -np) co-executes once traced
  --debug                  single-process debug mode (implies -np 1 and --report)
  --report                 rank 0 prints its tracing report at exit (any mode but eager)
  --dot FILE               rank 0 writes the traced graph to FILE as Graphviz DOT at exit
  --no-prefix              do not prefix output lines with the rank
  --python PATH            interpreter for .py programs
  --master-addr ADDR       address ranks use to reach the control plane
  --master-port PORT       port of the control plane (default: a free one)
  --heartbeat-timeout SEC  a rank silent this long is declared hung (default 10)
  --kill-grace SEC         time between SIGTERM and SIGKILL when stopping ranks (default 3)
  -v, --verbose            report the launch and the job's end
  -h, --help               show this help
  --version                show the version
)";
}

ParseResult ParseCommandLine(const std::vector<std::string>& argv) {
  ParseResult result;
  LaunchSettings& s = result.settings;
  auto fail = [&](std::string message) {
    result.action = ParseResult::Action::kError;
    result.error = std::move(message);
    return result;
  };

  size_t i = 1;
  // Fetches the value of option argv[i]; accepts "--opt value" and "--opt=value".
  auto take_value = [&](const std::string& arg, const std::string& name,
                        std::string* value) -> bool {
    if (arg.size() > name.size() && arg.compare(0, name.size(), name) == 0 && arg[name.size()] == '=') {
      *value = arg.substr(name.size() + 1);
      return true;
    }
    if (i + 1 >= argv.size()) return false;
    *value = argv[++i];
    return true;
  };
  auto matches = [](const std::string& arg, const std::string& name) {
    return arg == name || (arg.size() > name.size() && arg.compare(0, name.size(), name) == 0 &&
                           arg[name.size()] == '=');
  };

  for (; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    std::string value;
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg.empty() || arg[0] != '-') break;
    if (arg == "-h" || arg == "--help") {
      result.action = ParseResult::Action::kHelp;
      return result;
    }
    if (arg == "--version") {
      result.action = ParseResult::Action::kVersion;
      return result;
    }
    if (matches(arg, "-np") || matches(arg, "-n") || matches(arg, "--nproc")) {
      std::string name = arg.substr(0, arg.find('='));
      if (!take_value(arg, name, &value)) return fail(StrCat(name, " needs a number of ranks"));
      auto n = ParseInt(value, 1, 4096);
      if (!n) {
        return fail(StrCat("invalid number of ranks '", value, "' for ", name,
                           ": expected a whole number from 1 to 4096"));
      }
      s.num_ranks = static_cast<int>(*n);
      s.num_ranks_given = true;
    } else if (matches(arg, "-H") || matches(arg, "--hosts")) {
      std::string name = arg.substr(0, arg.find('='));
      if (!take_value(arg, name, &value)) return fail(StrCat(name, " needs a host list like a:2,b:2"));
      std::string error;
      if (!ParseHostList(value, &s.hosts, &error)) return fail(error);
    } else if (matches(arg, "--hostfile")) {
      if (!take_value(arg, "--hostfile", &value)) return fail("--hostfile needs a file name");
      s.hostfile = value;
    } else if (matches(arg, "--mode")) {
      if (!take_value(arg, "--mode", &value)) return fail("--mode needs one of eager, trace, auto, coexec");
      if (value == "auto") s.mode = Mode::kAuto;
      else if (value == "eager") s.mode = Mode::kEager;
      else if (value == "trace") s.mode = Mode::kTrace;
      else if (value == "coexec") s.mode = Mode::kCoexec;
      else return fail(StrCat("unknown --mode '", value, "': expected eager, trace, auto or coexec"));
    } else if (arg == "--debug") {
      s.debug = true;
    } else if (arg == "--report") {
      s.report = true;
    } else if (matches(arg, "--dot")) {
      if (!take_value(arg, "--dot", &value)) return fail("--dot needs a file name");
      std::string error;
      if (!ResolveDotFile(value, &s.dot, &error)) return fail(error);
    } else if (arg == "--no-prefix") {
      s.prefix_output = false;
    } else if (arg == "-v" || arg == "--verbose") {
      s.verbose = true;
    } else if (matches(arg, "--python")) {
      if (!take_value(arg, "--python", &value)) return fail("--python needs an interpreter path");
      s.python = value;
    } else if (matches(arg, "--master-addr")) {
      if (!take_value(arg, "--master-addr", &value)) return fail("--master-addr needs an address");
      s.master_addr = value;
    } else if (matches(arg, "--master-port")) {
      if (!take_value(arg, "--master-port", &value)) return fail("--master-port needs a port");
      auto port = ParseInt(value, 1, 65535);
      if (!port) return fail(StrCat("invalid --master-port '", value, "': expected 1 to 65535"));
      s.master_port = static_cast<int>(*port);
    } else if (matches(arg, "--heartbeat-timeout") || matches(arg, "--kill-grace")) {
      std::string name = arg.substr(0, arg.find('='));
      if (!take_value(arg, name, &value)) return fail(StrCat(name, " needs a number of seconds"));
      auto seconds = ParseSeconds(value);
      if (!seconds) return fail(StrCat("invalid ", name, " '", value, "': expected seconds > 0"));
      (name == "--kill-grace" ? s.kill_grace : s.heartbeat_timeout) = ToMillis(*seconds);
    } else {
      return fail(StrCat("unknown option '", arg, "' (see terrarun --help)"));
    }
  }

  if (i >= argv.size()) return fail("no program given: usage: terrarun [options] program [args...]");
  s.program = argv[i];
  s.args.assign(argv.begin() + static_cast<long>(i) + 1, argv.end());

  if (s.debug) {
    if (s.num_ranks_given && s.num_ranks != 1) {
      return fail("--debug runs a single process: drop -np or use -np 1");
    }
    if (s.uses_mpirun()) return fail("--debug runs a single local process: drop -H/--hostfile");
  }
  if (s.mode == Mode::kEager && (s.report || !s.dot.empty())) {
    const char* name = s.report ? "--report" : "--dot";
    return fail(StrCat(name, " needs tracing: use --mode trace or auto (eager records nothing)"));
  }
  if (s.debug && s.mode != Mode::kEager) s.report = true;
  if (!s.hosts.empty() && !s.hostfile.empty()) return fail("give either -H or --hostfile, not both");
  if (!s.hosts.empty() && !s.num_ranks_given) {
    int total = 0;
    for (const auto& h : s.hosts) total += h.slots;
    s.num_ranks = total;
  }
  // A heartbeat every tenth of the timeout, at most every second.
  s.heartbeat_interval = std::min(std::chrono::milliseconds(1000), s.heartbeat_timeout / 10);
  if (s.heartbeat_interval.count() < 10) s.heartbeat_interval = std::chrono::milliseconds(10);
  return result;
}

}  // namespace terra::launcher
