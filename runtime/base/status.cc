#include "runtime/base/status.h"

#include "runtime/base/check.h"

namespace terra {

const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kInvalidArgument: return "invalid argument";
    case StatusCode::kTimeout: return "timeout";
    case StatusCode::kUnavailable: return "unavailable";
    case StatusCode::kPermissionDenied: return "permission denied";
    case StatusCode::kInternal: return "internal";
    case StatusCode::kAborted: return "aborted";
  }
  return "unknown";
}

void Status::ThrowIfError() const {
  switch (code_) {
    case StatusCode::kOk: return;
    case StatusCode::kTimeout: throw TimeoutError(message_);
    case StatusCode::kInternal: throw InternalError(message_);
    default: throw Error(message_);
  }
}

}  // namespace terra
