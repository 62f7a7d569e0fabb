#include "comm/work.h"

#include <utility>

#include "runtime/base/check.h"

namespace terra::comm {

Work::Work(std::string description) : description_(std::move(description)) {}

void Work::Wait(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  auto done = [this] { return result_.has_value(); };
  if (timeout == kWaitForever) {
    completed_cv_.wait(lock, done);
  } else if (!completed_cv_.wait_for(lock, timeout, done)) {
    throw TimeoutError(StrCat(description_, " has not completed after waiting ",
                              static_cast<double>(timeout.count()) / 1000.0,
                              " s (Work::Wait's timeout). The collective is not cancelled and "
                              "its buffers stay in use: wait again, or let the collective's own "
                              "timeout fail it. A rank that never joins it is the usual cause."));
  }
  Status status = *result_;
  lock.unlock();
  status.ThrowIfError();
}

bool Work::IsCompleted() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return result_.has_value();
}

std::optional<Status> Work::Result() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return result_;
}

bool Work::Complete(Status status) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (result_.has_value()) return false;
    result_ = std::move(status);
  }
  completed_cv_.notify_all();
  return true;
}

}  // namespace terra::comm
