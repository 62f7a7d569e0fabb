// Minimal leveled logging to stderr. The level comes from TERRA_LOG_LEVEL
// (error, warning, info, debug; default warning) read once per process.
// Thread-safe: each message is written with one write() call.
#pragma once

#include <string>

#include "runtime/base/check.h"

namespace terra {

enum class LogLevel { kError = 0, kWarning = 1, kInfo = 2, kDebug = 3 };

bool LogEnabled(LogLevel level);
void LogMessage(LogLevel level, const std::string& message);

}  // namespace terra

#define TERRA_LOG(level, ...)                                                      \
  do {                                                                             \
    if (::terra::LogEnabled(::terra::LogLevel::level)) {                           \
      ::terra::LogMessage(::terra::LogLevel::level, ::terra::StrCat(__VA_ARGS__)); \
    }                                                                              \
  } while (false)
