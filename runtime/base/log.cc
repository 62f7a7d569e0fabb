#include "runtime/base/log.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace terra {
namespace {

LogLevel ReadLevel() {
  const char* env = std::getenv("TERRA_LOG_LEVEL");
  if (env == nullptr) return LogLevel::kWarning;
  if (std::strcmp(env, "error") == 0) return LogLevel::kError;
  if (std::strcmp(env, "info") == 0) return LogLevel::kInfo;
  if (std::strcmp(env, "debug") == 0) return LogLevel::kDebug;
  return LogLevel::kWarning;
}

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kError: return "error";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kInfo: return "info";
    case LogLevel::kDebug: return "debug";
  }
  return "?";
}

}  // namespace

bool LogEnabled(LogLevel level) {
  static const LogLevel kThreshold = ReadLevel();
  return level <= kThreshold;
}

void LogMessage(LogLevel level, const std::string& message) {
  std::string line = StrCat("terra ", LevelName(level), ": ", message, "\n");
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace terra
