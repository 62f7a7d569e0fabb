// The executor of co-execution (design.md §6): one thread that runs the
// validated ops of the program in program order, filling the future tensors
// the program's thread handed out.
//
// Protocol:
//   - The program's thread makes the futures it hands out (NewFuture) and
//     Submits a Work: an op, its boxed arguments as the program gave them
//     (scalars by value: input feeding), and where its outputs go (empty for
//     in-place ops, which write their arguments).
//   - Values live in slots (Slot): the executor's own handle on a future's
//     memory. A future tensor's storage refers to its slot; an argument that
//     lives in a future's memory (a future, a view of one, an in-place result)
//     is handed to the executor as its slot plus the tensor's layout, never as
//     the program's tensor. Autograd decides by reference counts (of the
//     tensor and of its storage) whether AccumulateGrad steals a gradient and
//     whether the engine accumulates in place; with the executor holding no
//     reference to the program's tensors, the program issues the same ops
//     however far behind the executor is. Arguments in ordinary memory
//     (parameters, data) are held as given.
//   - The executor thread runs each Work below autograd (autograd already ran
//     on the program's thread), rebuilding slot arguments as its own tensors
//     on the slots' memory, and puts each result into its output's slot (the
//     result's storage itself when the layouts match, else a copy).
//   - Drain blocks until every submitted Work has run, then points each live
//     future's storage at its slot's memory and lifts its "value not ready"
//     guard. Only the program's thread touches the program's storages. If a
//     Work failed, the executor skips the rest (their futures stay guarded)
//     and Drain throws terra::Error naming the op and where it was issued.
//   - Synchronous mode (debug): Submit runs the work on the caller's thread
//     at once, so an error surfaces at the line that issued the op.
// Threading: NewFuture, Submit and Drain from one thread (the program's); the
// executor thread is private. The destructor drains (ignoring errors) and
// joins.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "graph/node.h"

namespace terra::runtime {

// The executor's handle on one future's value. `storage` is set on the
// executor thread when the op producing the value has run; the program's
// future storage refers to the slot (its DataPtr context) and gets its memory
// at the next Drain.
struct Slot : c10::intrusive_ptr_target {
  c10::Storage storage;
};

// Where one output of a Work goes. Weak: when neither the program nor a
// queued Work can see the value any more, it is not kept.
struct FutureOutput {
  c10::weak_intrusive_ptr<Slot> slot{c10::intrusive_ptr<Slot>()};
  const graph::TensorMeta* meta = nullptr;  // sizes, strides, dtype; owned by the graph
  size_t nbytes = 0;
};

// An argument (or one element of a tensor-list argument) that lives in a
// future's memory: the slot and the layout the program's tensor has there.
struct SlotArgument {
  uint32_t arg = 0;
  int32_t element = -1;  // -1: the argument itself
  c10::intrusive_ptr<Slot> slot;
  c10::SmallVector<int64_t, 5> sizes;
  c10::SmallVector<int64_t, 5> strides;
  int64_t offset = 0;
  c10::DispatchKeySet keys;
  caffe2::TypeMeta dtype;
};

struct Work {
  std::optional<c10::OperatorHandle> op;  // empty only in an unused ring entry
  torch::jit::Stack inputs;
  std::vector<FutureOutput> futures;  // one per tensor the op returns, in order
  std::string where;                  // the issuing program location, for errors
  const graph::Location* location = nullptr;  // or this (owned by the graph), named on failure
  std::vector<SlotArgument> slot_args;  // filled by Commit

  // Empties the entry for reuse, keeping the vectors' capacity.
  void Clear() {
    op.reset();
    inputs.clear();
    futures.clear();
    where.clear();
    location = nullptr;
    slot_args.clear();
  }
};

// The slot whose memory `t` lives in (a future, a view of one, an in-place
// result), or null: ordinary memory.
Slot* SlotOf(const at::Tensor& t);

// A tensor with the given layout whose storage has no memory yet and is
// guarded, so that reading or writing its data throws (the safety net for a
// read Terra did not foresee). Without an executor: a future never filled.
at::Tensor MakeFuture(c10::IntArrayRef sizes, c10::IntArrayRef strides, c10::ScalarType dtype,
                      c10::Device device, FutureOutput* output = nullptr);

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

  // A future for an output of the next Work submitted: fills `output`.
  at::Tensor NewFuture(const graph::TensorMeta& meta, FutureOutput* output);
  // The entry to fill for the next Work: its vectors are empty but keep their
  // capacity (no allocation per op once warm). Then Commit.
  Work& Next();
  void Commit();
  void Submit(Work work);  // Next, move in, Commit
  // Waits until everything submitted so far has run and makes the futures
  // real; rethrows a failure.
  void Drain();

  // Whether a Work submitted since the last Drain may read or write `t`'s
  // memory (ordinary memory; futures are always the executor's).
  bool MayBeQueued(const at::Tensor& t) const;

  uint64_t submitted() const { return submitted_; }
  // Seconds the program's thread spent waiting in Drain.
  double drain_wait_seconds() const { return drain_wait_s_; }
  double busy_seconds() const;

 private:
  static constexpr uint64_t kRing = 4096;  // queued Works at most; a power of two

  // Waits until `done()` (spinning briefly, then parked through
  // around_wait_); the executor thread wakes parked waiters.
  void WaitFor(const std::function<bool()>& done);
  void Loop();
  void Run(Work& work);  // on the executor thread (or the caller, synchronous)
  // Points the live futures made since the last call at their slots' memory.
  void Materialize();
  void ThrowError();

  const bool synchronous_;
  const WaitWrapper around_wait_;
  // The queue: a single-producer single-consumer ring. The program's thread
  // fills ring_[head_] and publishes head_ + 1; the executor runs
  // ring_[tail_], clears it and publishes tail_ + 1.
  std::vector<Work> ring_;
  std::atomic<uint64_t> head_{0};
  std::atomic<uint64_t> tail_{0};
  std::atomic<bool> executor_parked_{false};
  std::atomic<bool> program_waiting_{false};  // in Drain: the executor may use its core
  std::atomic<bool> program_parked_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  std::mutex mu_;  // parking, and error_
  std::condition_variable wake_executor_;
  std::condition_variable wake_program_;
  std::exception_ptr error_;
  std::string error_where_;
  uint64_t submitted_ = 0;
  // Futures handed out since the last Drain (program's thread only).
  std::vector<c10::weak_intrusive_ptr<c10::StorageImpl>> unmaterialized_;
  // Storages in ordinary memory that Works submitted since the last Drain
  // hold (program's thread only).
  std::unordered_set<const c10::StorageImpl*> referenced_;
  double drain_wait_s_ = 0;
  std::atomic<uint64_t> busy_ns_{0};
  std::thread thread_;
};

}  // namespace terra::runtime
