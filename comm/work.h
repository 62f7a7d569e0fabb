// Work: the handle of one asynchronous collective.
//
// A communicator creates a Work when a collective is submitted and completes
// it exactly once, from whatever thread finished (or failed, or timed out)
// the collective, with a Status. Any thread may wait on it.
//
// Wait(timeout) semantics, exactly:
//  - Blocks the calling thread until the Work is completed or `timeout` has
//    passed, whichever comes first. kWaitForever waits without a deadline.
//  - Completed with an ok Status: returns. From then on the collective's
//    output buffers hold the result and its input buffers may be reused.
//  - Completed with an error: throws the error as the matching terra
//    exception (Status::ThrowIfError: kTimeout as terra::TimeoutError, every
//    other code as terra::Error), on every call, from every waiting thread.
//    A communicator's own per-collective timeout (the `timeout` of the
//    options structs, communicator.h) arrives this way.
//  - Not completed when `timeout` passes: throws terra::TimeoutError naming
//    the collective, its size and its rank. The collective is NOT cancelled
//    and the Work stays pending: it may still complete, so the buffers stay
//    in use, and Wait may be called again.
// Wait never completes, cancels or changes the Work.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>

#include "runtime/base/status.h"

namespace terra::comm {

class Work {
 public:
  static constexpr std::chrono::milliseconds kWaitForever = std::chrono::milliseconds::max();

  // description names the collective for error messages, e.g.
  // "allreduce(sum) of 1024 x float32 on rank 1 of 4 [mpi]".
  explicit Work(std::string description);
  // Virtual: a backend may add device-side waits in a subclass (CudaWork,
  // nccl_communicator.h), found with std::dynamic_pointer_cast.
  virtual ~Work() = default;
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;

  void Wait(std::chrono::milliseconds timeout = kWaitForever) const;

  // True once completed, successfully or not. Does not block.
  bool IsCompleted() const;

  // The completion Status, or nullopt while pending. Does not block.
  std::optional<Status> Result() const;

  // Completes the Work and wakes every waiter. Thread-safe. Only the first
  // call counts: it returns true; later calls (a late result after a
  // timeout) are ignored and return false.
  bool Complete(Status status);

  const std::string& description() const { return description_; }

 private:
  const std::string description_;
  mutable std::mutex mutex_;
  mutable std::condition_variable completed_cv_;
  std::optional<Status> result_;
};

}  // namespace terra::comm
