#include "runtime/base/check.h"

namespace terra::detail {

void ThrowError(const std::string& message) { throw Error(message); }

void ThrowInternalError(const char* file, int line, const char* condition,
                        const std::string& message) {
  throw InternalError(StrCat("internal error at ", file, ":", line, ": check '", condition,
                             "' failed", message.empty() ? "" : ": ", message,
                             " (this is a bug in Terra; please report it)"));
}

}  // namespace terra::detail
