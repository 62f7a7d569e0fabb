// terrarun: see HelpText() in settings.cc and docs/launcher.md.
#include <unistd.h>

#include <climits>
#include <iostream>

#include "launcher/job.h"
#include "launcher/settings.h"
#include "launcher/supervisor.h"
#include "runtime/base/check.h"

namespace {

std::string SelfPath(const char* argv0) {
  char buffer[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  if (n > 0) return std::string(buffer, static_cast<size_t>(n));
  return argv0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace terra::launcher;
  std::vector<std::string> args(argv, argv + argc);
  try {
    if (args.size() >= 2 && args[1] == "--exec-rank") {
      return ExecRank(std::vector<std::string>(args.begin() + 2, args.end()));
    }
    ParseResult parsed = ParseCommandLine(args);
    switch (parsed.action) {
      case ParseResult::Action::kHelp:
        std::cout << HelpText();
        return 0;
      case ParseResult::Action::kVersion:
        std::cout << "terrarun " << TERRA_VERSION << "\n";
        return 0;
      case ParseResult::Action::kError:
        std::cerr << "terrarun: error: " << parsed.error << "\n";
        return kExitLaunchError;
      case ParseResult::Action::kRun:
        break;
    }
    const LaunchSettings& settings = parsed.settings;
    return settings.uses_mpirun() ? LaunchWithMpirun(settings, SelfPath(argv[0]))
                                  : LaunchLocal(settings);
  } catch (const terra::Error& e) {
    std::cerr << "terrarun: error: " << e.what() << "\n";
    return kExitLaunchError;
  }
}
