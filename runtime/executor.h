// The executor of co-execution (design.md §6): one thread that runs the
// validated ops of the program in program order, filling the future tensors
// the program's thread handed out.
//
// Protocol:
//   - The program's thread Submits a Work: an op, its boxed arguments as the
//     program gave them (tensors by reference, scalars by value: input
//     feeding), and the futures its outputs go to (empty for in-place ops,
//     which write their arguments).
//   - The executor thread runs each Work below autograd (autograd already ran
//     on the program's thread), then copies each result into its future, after
//     clearing the future's "value not ready" guard (MakeFuture).
//   - Drain blocks until every submitted Work has run. If one failed, the
//     executor skips the rest (their futures stay guarded) and Drain throws
//     terra::Error naming the op and where the program issued it.
//   - Synchronous mode (debug): Submit runs the work on the caller's thread
//     at once, so an error surfaces at the line that issued the op.
// Threading: Submit and Drain from one thread (the program's); the executor
// thread is private. The destructor drains (ignoring errors) and joins.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "graph/node.h"

namespace terra::runtime {

// Where one output of a Work goes: the future's storage, weakly, and its
// layout. Not the future tensor, and not a strong reference to its storage:
// autograd decides by use counts whether AccumulateGrad steals a gradient or
// clones it and whether the engine accumulates gradients in place, so a
// reference held here would change the ops the program issues. A future the
// program dropped before it was filled is simply not filled.
struct FutureOutput {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const graph::TensorMeta* meta = nullptr;  // sizes, strides, dtype; owned by the graph
};

struct Work {
  c10::OperatorHandle op;
  torch::jit::Stack inputs;
  std::vector<FutureOutput> futures;  // one per tensor the op returns, in order
  std::string where;                  // the issuing program location, for errors
  const graph::Location* location = nullptr;  // or this (owned by the graph), named on failure
};

// A tensor with `like`'s metadata whose storage is allocated but not filled,
// guarded so that reading or writing its data throws until the executor fills
// it (the safety net for a read Terra did not foresee).
at::Tensor MakeFuture(c10::IntArrayRef sizes, c10::IntArrayRef strides, c10::ScalarType dtype,
                      c10::Device device);

// Runs a blocking wait of the program's thread. The Python layer wraps waits
// so that they release the GIL: the executor thread may need it, since
// dropping the last reference to a tensor that Python ever saw decrefs its
// PyObject. Empty: wait as is.
using WaitWrapper = std::function<void(const std::function<void()>& wait)>;

class Executor {
 public:
  explicit Executor(bool synchronous = false, WaitWrapper around_wait = {});
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  void Submit(Work work);
  // Waits until everything submitted so far has run; rethrows a failure.
  void Drain();

  uint64_t submitted() const { return submitted_; }
  // Seconds the program's thread spent waiting in Drain.
  double drain_wait_seconds() const { return drain_wait_s_; }
  double busy_seconds() const;

 private:
  // Blocks (through around_wait_) until the queue is empty and no Work runs;
  // returns holding mu_.
  std::unique_lock<std::mutex> WaitUntilIdle();
  void Loop();
  void Run(Work& work);  // on the executor thread (or the caller, synchronous)

  const bool synchronous_;
  const WaitWrapper around_wait_;
  mutable std::mutex mu_;
  std::condition_variable has_work_;
  std::condition_variable drained_;
  std::deque<Work> queue_;
  bool running_ = false;  // the executor thread holds a Work
  bool stop_ = false;
  std::exception_ptr error_;
  std::string error_where_;
  uint64_t submitted_ = 0;
  double drain_wait_s_ = 0;
  double busy_s_ = 0;  // guarded by mu_
  std::thread thread_;
};

}  // namespace terra::runtime
