// The NCCL backend's classes, shared by nccl_communicator.cc (formation,
// submission, teardown) and nccl_completion.cc (the completion thread and
// breaking). Internal to comm/: callers use nccl_communicator.h, whose header
// comment states the contract this implements.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "comm/collective.h"
#include "comm/nccl_communicator.h"
#include "comm/nccl_util.h"

namespace terra::comm {

using NcclClock = std::chrono::steady_clock;

// A collective's Work, with the event recorded after it.
class NcclWork final : public CudaWork {
 public:
  NcclWork(std::string description, const NcclContext& context)
      : CudaWork(std::move(description)), context_(context) {}
  ~NcclWork() override;

  void WaitOnStream(void* stream) const override;

  cudaEvent_t end_ = nullptr;  // owned; set (and recorded) before the Work is shared

 private:
  const NcclContext context_;
};

// Locks: submit_mutex_ serializes the NCCL calls on comm_ (they must not
// overlap, and submission order is completion order); mutex_ guards the
// completion state. Order: submit_mutex_, then mutex_ (the completion
// thread, holding mutex_, only try_locks submit_mutex_). comm_ changes only
// with both held (Break) or on one thread (Form, the destructor).
class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(int rank, int world_size, int device, NcclCommunicatorOptions options)
      : context_{rank, HostName()},
        world_size_(world_size),
        device_(device),
        options_(std::move(options)) {}
  ~NcclCommunicator() override;

  // Shares the unique id under `id_key`, creates the stream, event and NCCL
  // communicator, and starts the completion thread. Throws on failure.
  void Form(control::ControlClient* client, const std::string& id_key);

  int rank() const override { return context_.rank; }
  int size() const override { return world_size_; }
  const char* backend() const override { return "nccl"; }

  std::shared_ptr<Work> Allreduce(Buffer buffer, const AllreduceOptions& options) override {
    return Submit(Collective::Of(buffer, options));
  }
  std::shared_ptr<Work> Broadcast(Buffer buffer, const BroadcastOptions& options) override {
    return Submit(Collective::Of(buffer, options));
  }
  std::shared_ptr<Work> Allgather(Buffer input, Buffer output,
                                  const AllgatherOptions& options) override {
    return Submit(Collective::Of(input, output, options));
  }
  std::shared_ptr<Work> ReduceScatter(Buffer input, Buffer output,
                                      const ReduceScatterOptions& options) override {
    return Submit(Collective::Of(input, output, options));
  }
  std::shared_ptr<Work> Barrier(const BarrierOptions& options) override {
    return Submit(Collective::Of(options));
  }

 private:
  struct Pending {
    std::shared_ptr<NcclWork> work;
    NcclClock::time_point deadline;
    std::chrono::milliseconds timeout;
  };
  // The completion thread's own state between rounds.
  struct PollState {
    NcclClock::time_point next_async_check;
    const NcclWork* front = nullptr;  // the oldest pending Work last round
    NcclClock::time_point front_since;
  };

  // nccl_communicator.cc
  std::shared_ptr<Work> Submit(const Collective& c);
  // Enqueues the NCCL call (and the integer kAvg division) on `stream`.
  void Run(const Collective& c, cudaStream_t stream, NcclClock::time_point deadline);
  // Polls a call that answered ncclInProgress until it is done; answers
  // ncclInProgress if `deadline` passes or the communicator is breaking first.
  ncclResult_t Settle(ncclResult_t rc, NcclClock::time_point deadline);
  void Close();  // finalize and destroy comm_ (the destructor)

  // nccl_completion.cc
  // Marks the communicator broken, aborts NCCL, completes `culprit` (if any)
  // with `status`, then fails everything pending with kAborted; later calls
  // fail at once. In that order, so that whoever sees the culprit fail sees
  // the communicator broken. Break takes submit_mutex_ (first asking a
  // Settle in progress to give up); BreakLocked needs it held.
  void Break(const std::string& what, const std::shared_ptr<NcclWork>& culprit = nullptr,
             Status status = {});
  void BreakLocked(const std::string& what, const std::shared_ptr<NcclWork>& culprit = nullptr,
                   Status status = {});
  std::string BrokenReason();
  void CompletionLoop();
  // One round of CompletionLoop, with mutex_ held by `lock` on entry and
  // exit; false once stopping with nothing pending.
  bool Poll(std::unique_lock<std::mutex>& lock, PollState* state);
  // Fails the first pending Work past its deadline with kTimeout, then
  // breaks; false if none is. mutex_ held by `lock` on entry and exit.
  bool ExpireOverdue(std::unique_lock<std::mutex>& lock);
  // "NCCL reported ..." when ncclCommGetAsyncError has an error; "" also
  // when a submission holds submit_mutex_ (checked next round). mutex_ held.
  std::string AsyncErrorLocked();
  std::string TimeoutMessage(const Work& work, std::chrono::milliseconds timeout) const;

  const NcclContext context_;
  const int world_size_;
  const int device_;
  const NcclCommunicatorOptions options_;
  cudaStream_t stream_ = nullptr;   // non-blocking; where NCCL runs outside capture
  cudaEvent_t ready_ = nullptr;     // the caller's stream -> stream_; under submit_mutex_
  void* barrier_buffer_ = nullptr;  // one int32 on the device
  std::atomic<bool> breaking_{false};

  std::mutex submit_mutex_;
  std::mutex mutex_;
  ncclComm_t comm_ = nullptr;  // null once aborted
  std::condition_variable pending_cv_;
  std::deque<Pending> pending_;  // in submission order
  std::string broken_reason_;
  bool stopping_ = false;
  std::thread completion_thread_;
};

}  // namespace terra::comm
