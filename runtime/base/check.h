// Errors inside a rank.
//
// TERRA_CHECK(cond, parts...) reports a mistake of the user's (bad input, bad
// configuration): it throws terra::Error whose message says what is wrong and
// what to do. TERRA_INTERNAL_CHECK(cond, parts...) reports a bug of ours: it
// throws terra::InternalError naming file and line. Both build their message
// only when the condition fails, so they cost one branch on the hot path.
//
// Errors that cross a thread, a rank or a process travel as terra::Status
// (status.h), never as exceptions.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace terra {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class InternalError : public Error {
 public:
  using Error::Error;
};

// The operation did not finish before its deadline.
class TimeoutError : public Error {
 public:
  using Error::Error;
};

namespace detail {

template <typename... Parts>
std::string StrCat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

[[noreturn]] void ThrowError(const std::string& message);
[[noreturn]] void ThrowInternalError(const char* file, int line, const char* condition,
                                     const std::string& message);

}  // namespace detail

template <typename... Parts>
std::string StrCat(Parts&&... parts) {
  return detail::StrCat(std::forward<Parts>(parts)...);
}

}  // namespace terra

#define TERRA_CHECK(cond, ...)                                           \
  do {                                                                   \
    if (__builtin_expect(!(cond), 0)) {                                  \
      ::terra::detail::ThrowError(::terra::detail::StrCat(__VA_ARGS__)); \
    }                                                                    \
  } while (false)

#define TERRA_INTERNAL_CHECK(cond, ...)                                     \
  do {                                                                      \
    if (__builtin_expect(!(cond), 0)) {                                     \
      ::terra::detail::ThrowInternalError(__FILE__, __LINE__, #cond,        \
                                          ::terra::detail::StrCat("", ##__VA_ARGS__)); \
    }                                                                       \
  } while (false)
