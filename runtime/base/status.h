// A status value for errors that cross a thread, a rank or a process boundary,
// where an exception cannot travel. Inside one thread, prefer exceptions
// (check.h).
#pragma once

#include <string>
#include <utility>

namespace terra {

enum class StatusCode { kOk, kInvalidArgument, kTimeout, kUnavailable, kPermissionDenied, kInternal, kAborted };

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Throws the matching terra exception when not ok.
  void ThrowIfError() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

const char* StatusCodeName(StatusCode code);

}  // namespace terra
