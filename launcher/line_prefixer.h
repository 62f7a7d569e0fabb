// Splits a child's output stream into lines and prefixes each one, so that
// the lines of several ranks interleave whole. Not thread-safe; one per stream.
#pragma once

#include <string>
#include <string_view>

namespace terra::launcher {

class LinePrefixer {
 public:
  // A partial line longer than this is emitted as if it ended, so a rank
  // printing without newlines cannot grow the launcher's memory.
  static constexpr size_t kMaxPendingBytes = 64 * 1024;

  explicit LinePrefixer(std::string prefix) : prefix_(std::move(prefix)) {}

  // Consumes data; returns the complete lines it finished, each prefixed.
  std::string Feed(std::string_view data);
  // Returns the pending partial line, prefixed and newline-terminated ("" if none).
  std::string Flush();

 private:
  std::string prefix_;
  std::string pending_;
};

}  // namespace terra::launcher
