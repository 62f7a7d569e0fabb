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
//   - AwaitValues (a read of some values: `.item()`, printing) waits only
//     for the last submitted Work that writes their memory (each slot, and
//     each ordinary storage a Work holds, knows its last writer's sequence
//     number) and makes real the futures of every Work that has run; the
//     executor goes on with the rest meanwhile, so the program runs ahead
//     into its next ops (the next iteration, past `loss.item()`).
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
#include <unordered_map>
#include <utility>
#include <vector>

#include "graph/node.h"
#include "runtime/backward_segment.h"
#include "runtime/tensor_layout.h"

namespace terra::runtime {

// The executor's handle on one future's value. `storage` is set on the
// executor thread when the op producing the value has run; the program's
// future storage refers to the slot (its DataPtr context) and gets its memory
// at the next Drain.
struct Slot : c10::intrusive_ptr_target {
  c10::Storage storage;
  // The last reference went: an executor thread allocated `storage`'s
  // memory, so one frees it (ReturnedMemory), where glibc takes it back
  // without locking another thread's arena and hands it to that thread's
  // next result hot. (intrusive_ptr calls release_resources only while weak
  // references remain, and otherwise just deletes.)
  ~Slot() override { ReturnStorage(); }
  void release_resources() override { ReturnStorage(); }
  void ReturnStorage();
  // Program's thread only: 1 + the sequence number of the last Work submitted
  // that writes this value (its producer, or an in-place op on it), in the
  // executor `writer`; a read of the value waits for that Work only. A value
  // outlives its executor (co-execution restarts on a grown graph with a new
  // one), and the old executor drained before it went, so a writer of another
  // executor is no wait at all.
  // Atomic (relaxed) only for AwaitOnAnyThread's reads from another thread.
  std::atomic<uint64_t> written{0};
  std::atomic<uint64_t> writer{0};  // Executor::id()
  void SetWriter(uint64_t executor, uint64_t seq) {
    writer.store(executor, std::memory_order_relaxed);
    written.store(seq + 1, std::memory_order_relaxed);
  }
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
  TensorLayout layout;
};

// An external value of a backward segment: a slot, or ordinary memory.
struct SegmentExternal {
  c10::intrusive_ptr<Slot> slot;
  c10::Storage storage;
  // Where the tensor the external was named by starts in `storage` this
  // time; the segment's arguments on it are laid out relative to it (a
  // batch sliced from a dataset tensor moves through it from step to step).
  int64_t offset = 0;
};

// What the pieces of one replayed segment share: its externals by index
// (set by the program's thread before the first piece is committed) and its
// internal values in flight (the executor's only).
struct SegmentRun {
  std::vector<SegmentExternal> externals;
  std::vector<c10::Storage> values;
};

struct Work {
  std::optional<c10::OperatorHandle> op;  // empty in an unused ring entry, and for a segment
  torch::jit::Stack inputs;
  std::vector<FutureOutput> futures;  // one per tensor the op returns, in order
  std::string where;                  // the issuing program location, for errors
  const graph::Location* location = nullptr;  // or this (owned by the graph), named on failure
  std::vector<SlotArgument> slot_args;  // filled by Commit
  // Slots the executor allocates (with this layout) before it runs the op:
  // the out arguments an out= op would have resized, grown on the program's
  // thread to the layout the node recorded.
  std::vector<std::pair<c10::intrusive_ptr<Slot>, const graph::TensorMeta*>> fresh;
  uint64_t written_args = 0;  // filled by Commit: bit i, the op writes argument i
  bool Writes(uint32_t arg) const { return arg < 64 ? (written_args >> arg & 1) != 0 : written_args == ~uint64_t{0}; }
  // A replayed backward segment instead of an op: its ops [segment_begin,
  // segment_end) (a replay runs in pieces where gradient hooks run between
  // them), the state its pieces share, and which of its values go to which
  // of `futures` (value id, index).
  std::shared_ptr<const BackwardSegment> segment;
  std::shared_ptr<SegmentRun> run;
  uint32_t segment_begin = 0;
  uint32_t segment_end = 0;
  std::vector<std::pair<uint32_t, uint32_t>> segment_futures;
  // A task of the program's instead of an op (a collective launched, or
  // waited for, in program order): runs with `inputs` (ordinary memory only,
  // which it may read and write) held and noted as touched.
  std::function<void()> task;
  // Inputs fed by value (copied at Commit), with the program's tensor each
  // was copied from: filled only for the commit observer, and cleared right
  // after it, so that the Work holds no reference to the program's memory.
  struct FedInput {
    uint32_t arg = 0;
    int32_t element = -1;
    c10::Storage storage;
    TensorLayout layout;
  };
  std::vector<FedInput> fed;
  // Python numbers the op took as tensors (`y * 0.5`), held as their value
  // (the argument `arg` itself is emptied at Commit) and rebuilt as a
  // wrapped number of `dtype` on the executor thread: made and freed on the
  // thread that uses them, instead of three small allocations per op of the
  // program's freed on the executor.
  struct Wrapped {
    uint32_t arg = 0;
    c10::ScalarType dtype = c10::ScalarType::Double;
    c10::Scalar value;
  };
  std::vector<Wrapped> wrapped;

  // Empties the entry for reuse, keeping the vectors' capacity.
  void Clear() {
    op.reset();
    inputs.clear();
    futures.clear();
    where.clear();
    location = nullptr;
    slot_args.clear();
    fresh.clear();
    written_args = 0;
    segment.reset();
    run.reset();
    task = nullptr;
    segment_begin = segment_end = 0;
    segment_futures.clear();
    fed.clear();
    wrapped.clear();
  }
};

// The slot whose memory `t` lives in (a future, a view of one, an in-place
// result), or null: ordinary memory.
Slot* SlotOf(const at::Tensor& t);

// Memory the program can read and write without ATen, at any time:
// memory with no allocator (numpy's behind torch.from_numpy, from_blob's, a
// memory map), and memory a live numpy array was handed (Tensor.numpy,
// numpy.asarray: ExposeMemory). A queued op reads it as it is when the op is
// queued (a copy), and an op that writes it runs on the program's thread.
bool DirectMemory(const at::Tensor& t);

// A read of `t` on a thread other than the program's (a checkpoint or
// logging thread handed a tensor by the program): waits until the Works that
// write its value have run and makes it real, if it is a future. Such a
// thread cannot drain the program's executor; it waits for that value only,
// polling (call it without the GIL: a queued Python task may need it).
void AwaitOnAnyThread(const at::Tensor& t);

// Notes that the program holds `t`'s memory through a numpy array, until
// EndExposure(key) with the returned key (when the array dies). Any thread.
uintptr_t ExposeMemory(const at::Tensor& t);
void EndExposure(uintptr_t key);

// A copy of CPU tensor `t`'s elements as they are now, with `t`'s layout, in
// memory of its own starting at `t`'s first element: a byte copy of the span
// the view covers, outside the dispatcher (it runs inside intercepted ops).
at::Tensor CopyNow(const at::Tensor& t);

// A tensor with the given layout whose storage has no memory yet and is
// guarded, so that reading or writing its data throws (the safety net for a
// read Terra did not foresee). Without an executor: a future never filled.
// `not_ready`: the guard's message to move in (a spare one), or null.
at::Tensor MakeFuture(c10::IntArrayRef sizes, c10::IntArrayRef strides, c10::ScalarType dtype,
                      c10::Device device, FutureOutput* output = nullptr, std::string* not_ready = nullptr);

// Runs a blocking wait of the program's thread. The Python layer wraps waits
// so that they release the GIL: the executor thread may need it, since
// dropping the last reference to a tensor that Python ever saw decrefs its
// PyObject. Empty: wait as is.
using WaitWrapper = std::function<void(const std::function<void()>& wait)>;

// The program's thread's own OpenMP worker threads, given up while an
// executor thread runs the kernels. libgomp's idle workers spin between
// parallel regions only while the threads it manages fit the cores; the
// program thread's pool, idle but alive, tips the executor's over that, and
// each of the executor's parallel regions then pays a futex wake (measured on
// 2 cores: a 30k-element tanh took 92 µs on a second thread against 44 µs,
// and 40 µs once the first thread's pool was released). While released, the
// program's thread runs its few own ops (views, reads, scalars) on one
// thread. Program's thread only.
class ProgramThreadPool {
 public:
  void Release();  // one thread here, and the idle workers let go
  void Restore();  // PyTorch's setting again
  bool released() const { return released_; }

 private:
  bool released_ = false;
  int threads_ = 1;
};

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
  // A read of these values (tensors, and tensors in lists): waits until every
  // submitted Work that writes their memory has run (not the Works after
  // them), and makes real the futures of every Work that has run; rethrows a
  // failure. The program may then read them while the executor goes on; it
  // must not write them (that needs Drain).
  void AwaitValues(c10::ArrayRef<c10::IValue> values);
  void AwaitValue(const at::Tensor& t) { AwaitValues(c10::IValue(t)); }

  // Whether a Work submitted and not yet run may read or write `t`'s memory
  // (ordinary memory; futures are always the executor's).
  bool MayBeQueued(const at::Tensor& t) const;

  // The program's thread runs ops of its own for a while (an eager
  // fallback): its intra-op threads back, until the executor is destroyed.
  void RestoreProgramThreads() { program_pool_.Restore(); }

  // Called on the program's thread for each Work committed, after its
  // arguments were taken (slot arguments noted), before the executor can
  // run it: co-execution learns backward segments from these.
  using CommitObserver = std::function<void(const Work&)>;
  void set_commit_observer(CommitObserver observer) { commit_observer_ = std::move(observer); }

  uint64_t submitted() const { return submitted_; }
  // Unique in the process (an address could be reused by the next executor).
  uint64_t id() const { return id_; }
  // Seconds the program's thread spent waiting in Drain.
  double drain_wait_seconds() const { return drain_wait_s_; }
  // Inputs copied at feed time (memory the program can write without ATen).
  uint64_t fed_by_value() const { return fed_by_value_; }
  double busy_seconds() const;

 private:
  static constexpr uint64_t kRing = 4096;  // queued Works at most; a power of two

  // Waits until `count` Works have run (spinning briefly, then parked
  // through around_wait_); the executor thread wakes a parked program once
  // its count is reached.
  void WaitUntilRun(uint64_t count);
  void Loop();
  void Run(Work& work);  // on the executor thread (or the caller, synchronous)
  void RunSegment(Work& work);
  // A segment's externals: the slots it writes, the ordinary storages it touches.
  void NoteSegmentExternals(Work& work, uint64_t seq);
  // Points the live futures of the Works before `done` (a count of Works
  // that have run) at their slots' memory.
  void Materialize(uint64_t done);
  // 1 + the sequence number of the last submitted Work that writes `t`'s
  // memory (0: none).
  uint64_t WrittenBy(const at::Tensor& t) const;
  // At Commit, the Work being `seq`: its slot arguments (or a segment's
  // externals) noted, then the commit observer.
  void TakeArguments(Work& work, uint64_t seq);
  void TakeSlotArguments(Work& work, uint64_t seq);
  // Bit i: the op's schema says it writes argument i (all bits past 63).
  uint64_t WrittenArguments(const c10::OperatorHandle& op);
  void ThrowError();

  const bool synchronous_;
  const WaitWrapper around_wait_;
  const uint64_t id_;
  // The queue: a single-producer single-consumer ring. The program's thread
  // fills ring_[head_] and publishes head_ + 1; the executor runs
  // ring_[tail_], clears it and publishes tail_ + 1.
  std::vector<Work> ring_;
  std::atomic<uint64_t> head_{0};
  std::atomic<uint64_t> tail_{0};
  std::atomic<bool> executor_parked_{false};
  std::atomic<bool> program_parked_{false};
  std::atomic<uint64_t> program_wants_{0};  // parked: the count of run Works it waits for
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  std::mutex mu_;  // parking, and error_
  std::condition_variable wake_executor_;
  std::condition_variable wake_program_;
  std::exception_ptr error_;
  std::string error_where_;
  uint64_t submitted_ = 0;
  uint64_t fed_by_value_ = 0;
  // Futures not yet made real, with the sequence number of the Work that
  // makes them, in order from unmaterialized_[materialized_] on (program's
  // thread only).
  std::vector<std::pair<uint64_t, c10::weak_intrusive_ptr<c10::StorageImpl>>> unmaterialized_;
  size_t materialized_ = 0;
  // Storages in ordinary memory that submitted Works hold, with 1 + the
  // sequence number of the last such Work (program's thread only; entries of
  // Works that have run are pruned at drains).
  std::unordered_map<const c10::StorageImpl*, uint64_t> referenced_;
  size_t prune_referenced_at_ = 1024;  // referenced_'s size that prunes it
  // Guard messages of materialized futures, for new ones (program's thread).
  static constexpr size_t kSpareMessages = 4096;
  std::vector<std::string> spare_messages_;
  // Notes that Work `seq` touches `storage` (ordinary memory), pruning the
  // storages whose Works have all run once the map has grown.
  void Reference(const c10::StorageImpl* storage, uint64_t seq);
  void Reference(const at::Tensor& t, uint64_t seq) { Reference(t.storage().unsafeGetStorageImpl(), seq); }
  std::unordered_map<const c10::OperatorName*, uint64_t> written_arguments_;  // by op
  double drain_wait_s_ = 0;
  std::atomic<uint64_t> busy_ns_{0};
  ProgramThreadPool program_pool_;
  CommitObserver commit_observer_;
  std::thread thread_;
};

}  // namespace terra::runtime
