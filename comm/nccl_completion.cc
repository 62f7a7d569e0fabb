// NcclCommunicator's completion thread and breaking (nccl_communicator.h
// states the contract; nccl_communicator_impl.h the locks).
#include <utility>

#include "comm/nccl_communicator_impl.h"
#include "runtime/base/check.h"
#include "runtime/base/log.h"

namespace terra::comm {
namespace {

// How often the completion thread asks NCCL for asynchronous errors.
constexpr auto kAsyncErrorCheckBusy = std::chrono::milliseconds(1);
constexpr auto kAsyncErrorCheckIdle = std::chrono::seconds(1);

}  // namespace

void NcclCommunicator::Break(const std::string& what, const std::shared_ptr<NcclWork>& culprit,
                             Status status) {
  breaking_ = true;  // a submission polling ncclInProgress gives up and frees submit_mutex_
  std::lock_guard<std::mutex> submit_lock(submit_mutex_);
  BreakLocked(what, culprit, std::move(status));
}

void NcclCommunicator::BreakLocked(const std::string& what,
                                   const std::shared_ptr<NcclWork>& culprit, Status status) {
  std::deque<Pending> abandoned;
  std::string reason;
  bool already_broken;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    already_broken = !broken_reason_.empty();
    if (!already_broken) {
      breaking_ = true;
      broken_reason_ = StrCat("the NCCL communicator is broken since ", what);
      reason = broken_reason_;
      abandoned.swap(pending_);
    }
    if (comm_ != nullptr) {
      // Makes NCCL's kernels exit. Non-blocking: it returns at once and
      // finishes freeing the communicator in the background.
      ncclResult_t rc = ncclCommAbort(comm_);
      if (rc != ncclSuccess && rc != ncclInProgress) {
        TERRA_LOG(kWarning, "NcclCommunicator: ncclCommAbort on rank ", context_.rank, ": ",
                  NcclErrorText(rc));
      }
      comm_ = nullptr;
    }
  }
  if (culprit) culprit->Complete(std::move(status));
  if (already_broken) return;
  pending_cv_.notify_all();
  for (Pending& p : abandoned) {
    p.work->Complete(
        Status(StatusCode::kAborted, StrCat(p.work->description(), " was aborted: ", reason)));
  }
}

std::string NcclCommunicator::BrokenReason() {
  std::lock_guard<std::mutex> lock(mutex_);
  return broken_reason_;
}

std::string NcclCommunicator::TimeoutMessage(const Work& work,
                                             std::chrono::milliseconds timeout) const {
  return StrCat(work.description(), " (host ", context_.host, ", cuda:", device_,
                ") did not complete within its timeout of ",
                static_cast<double>(timeout.count()) / 1000.0,
                " s: another rank never joined it (it died, hangs, or issued different "
                "collectives). The NCCL communicator was aborted and is unusable: report the "
                "error and exit; terrarun then stops the other ranks.");
}

std::string NcclCommunicator::AsyncErrorLocked() {
  // Never beside a submission: on a non-blocking communicator
  // ncclCommGetAsyncError also finishes (joins) the job of an enqueue in
  // progress, which the submitting thread's Settle polls too.
  std::unique_lock<std::mutex> submit_lock(submit_mutex_, std::try_to_lock);
  if (!submit_lock.owns_lock() || comm_ == nullptr) return "";
  ncclResult_t state = ncclSuccess;
  ncclResult_t query = ncclCommGetAsyncError(comm_, &state);
  ncclResult_t error = query != ncclSuccess ? query : state;
  if (error == ncclSuccess || error == ncclInProgress) return "";  // in progress: connecting
  return StrCat("NCCL reported an asynchronous error on rank ", context_.rank, " (host ",
                context_.host, "): ", NcclErrorText(error));
}

void NcclCommunicator::CompletionLoop() {
  // Relaxed: this thread's CUDA calls must not invalidate a CUDA graph that
  // another thread captures in cudaStreamCaptureModeGlobal.
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  (void)cudaThreadExchangeStreamCaptureMode(&mode);
  if (cudaError_t rc = cudaSetDevice(device_); rc != cudaSuccess) {
    TERRA_LOG(kWarning, "NcclCommunicator: cudaSetDevice(", device_, "): ", CudaErrorText(rc));
  }
  PollState state;
  state.next_async_check = NcclClock::now();
  std::unique_lock<std::mutex> lock(mutex_);
  while (Poll(lock, &state)) {
  }
}

// Each round: asynchronous errors (throttled), then the oldest pending end
// event, then every pending deadline; then, while collectives are pending and
// nothing changed, yields (busy_poll) or sleeps (poll_interval); waits on
// pending_cv_ while none are.
bool NcclCommunicator::Poll(std::unique_lock<std::mutex>& lock, PollState* state) {
  if (pending_.empty()) {
    if (stopping_) return false;
    pending_cv_.wait_for(lock, kAsyncErrorCheckIdle,
                         [this] { return stopping_ || !pending_.empty(); });
  }
  std::shared_ptr<NcclWork> front = pending_.empty() ? nullptr : pending_.front().work;
  std::string failure;  // a reason to break
  NcclClock::time_point now = NcclClock::now();
  if (front.get() != state->front) {
    state->front = front.get();
    state->front_since = now;
  }
  if (now >= state->next_async_check) {
    state->next_async_check = now + (front ? kAsyncErrorCheckBusy : kAsyncErrorCheckIdle);
    failure = AsyncErrorLocked();
  }
  if (failure.empty() && front) {
    lock.unlock();
    cudaError_t query = cudaEventQuery(front->end_);
    lock.lock();
    if (query == cudaSuccess) {
      if (!pending_.empty() && pending_.front().work == front) pending_.pop_front();
      lock.unlock();
      front->Complete(Status::Ok());  // false if Break failed it meanwhile
      lock.lock();
      return true;
    }
    if (query != cudaErrorNotReady) {
      failure = StrCat("CUDA reported an error on rank ", context_.rank, " (host ", context_.host,
                       "): ", CudaErrorText(query));
    }
  }
  if (!failure.empty()) {
    lock.unlock();
    Status status(StatusCode::kInternal,
                  front ? StrCat(front->description(), " failed: ", failure) : failure);
    Break(failure, front, std::move(status));
    lock.lock();
    return true;
  }
  if (ExpireOverdue(lock)) return true;
  if (front) {
    lock.unlock();
    if (NcclClock::now() - state->front_since < options_.busy_poll) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(options_.poll_interval);
    }
    lock.lock();
  }
  return true;
}

bool NcclCommunicator::ExpireOverdue(std::unique_lock<std::mutex>& lock) {
  NcclClock::time_point now = NcclClock::now();
  for (const Pending& p : pending_) {
    if (now < p.deadline || p.work->IsCompleted()) continue;
    std::shared_ptr<NcclWork> expired = p.work;
    std::chrono::milliseconds timeout = p.timeout;
    lock.unlock();
    Break(StrCat(expired->description(), " timed out"), expired,
          Status(StatusCode::kTimeout, TimeoutMessage(*expired, timeout)));
    lock.lock();
    return true;
  }
  return false;
}

}  // namespace terra::comm
