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

void NcclCommunicator::Break(const std::string& what) {
  breaking_ = true;  // a submission polling ncclInProgress gives up and frees submit_mutex_
  std::lock_guard<std::mutex> submit_lock(submit_mutex_);
  BreakLocked(what);
}

void NcclCommunicator::BreakLocked(const std::string& what) {
  std::deque<Pending> abandoned;
  std::string reason;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!broken_reason_.empty()) return;
    breaking_ = true;
    broken_reason_ = StrCat("the NCCL communicator is broken since ", what);
    reason = broken_reason_;
    abandoned.swap(pending_);
    if (comm_ != nullptr) {
      // Makes NCCL's kernels exit. Non-blocking: it may answer ncclInProgress
      // and finish freeing the communicator in the background.
      ncclResult_t rc = ncclCommAbort(comm_);
      if (rc != ncclSuccess && rc != ncclInProgress) {
        TERRA_LOG(kWarning, "NcclCommunicator: ncclCommAbort on rank ", context_.rank, ": ",
                  NcclErrorText(rc));
      }
      comm_ = nullptr;
    }
  }
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
  if (comm_ == nullptr) return "";
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
  NcclClock::time_point next_async_check = NcclClock::now();
  std::unique_lock<std::mutex> lock(mutex_);
  while (Poll(lock, &next_async_check)) {
  }
}

// Each round: asynchronous errors (throttled), then the oldest pending end
// event, then every pending deadline; sleeps poll_interval while collectives
// are pending and nothing changed, waits on pending_cv_ while none are.
bool NcclCommunicator::Poll(std::unique_lock<std::mutex>& lock,
                            NcclClock::time_point* next_async_check) {
  if (pending_.empty()) {
    if (stopping_) return false;
    pending_cv_.wait_for(lock, kAsyncErrorCheckIdle,
                         [this] { return stopping_ || !pending_.empty(); });
  }
  std::shared_ptr<NcclWork> front = pending_.empty() ? nullptr : pending_.front().work;
  std::string failure;  // a reason to break
  if (NcclClock::now() >= *next_async_check) {
    *next_async_check = NcclClock::now() + (front ? kAsyncErrorCheckBusy : kAsyncErrorCheckIdle);
    failure = AsyncErrorLocked();
  }
  if (failure.empty() && front) {
    lock.unlock();
    cudaError_t state = cudaEventQuery(front->end_);
    lock.lock();
    if (state == cudaSuccess) {
      if (!pending_.empty() && pending_.front().work == front) pending_.pop_front();
      lock.unlock();
      front->Complete(Status::Ok());  // false if Break failed it meanwhile
      lock.lock();
      return true;
    }
    if (state != cudaErrorNotReady) {
      failure = StrCat("CUDA reported an error on rank ", context_.rank, " (host ", context_.host,
                       "): ", CudaErrorText(state));
    }
  }
  if (!failure.empty()) {
    lock.unlock();
    if (front) {
      front->Complete(
          Status(StatusCode::kInternal, StrCat(front->description(), " failed: ", failure)));
    }
    Break(failure);
    lock.lock();
    return true;
  }
  NcclClock::time_point now = NcclClock::now();
  for (const Pending& p : pending_) {
    if (now < p.deadline || p.work->IsCompleted()) continue;
    std::shared_ptr<NcclWork> expired = p.work;
    std::chrono::milliseconds timeout = p.timeout;
    lock.unlock();
    if (expired->Complete(Status(StatusCode::kTimeout, TimeoutMessage(*expired, timeout)))) {
      Break(StrCat(expired->description(), " timed out"));
    }
    lock.lock();
    return true;
  }
  if (front) {
    lock.unlock();
    std::this_thread::sleep_for(options_.poll_interval);
    lock.lock();
  }
  return true;
}

}  // namespace terra::comm
