// Co-execution on the program's thread (design.md §4, §6; docs/coexecution.md):
// the OpObserver that takes ops over instead of running them.
//
// Per op (TakeOver): the Validator checks it against the TraceGraph. Then
//   - a view op runs for real here (metadata only, exact whatever the fed
//     arguments), and so does any op whose node is not predictable;
//   - an op whose result Python reads (`_local_scalar_dense`, any op that
//     returns a non-tensor) is a fetch: drain the executor, then run it here;
//   - an in-place (or out=) op goes to the executor, and Python gets its
//     argument back, as eager returns it;
//   - any other op goes to the executor, and Python gets future tensors built
//     from the node's recorded output metadata.
// A mismatch (divergence) drains the executor, so every future is real, and
// the rest of the iteration runs eagerly while the recorder (sharing the
// validator's OpLocator, so locations continue without a seam) records it
// from the divergent op on. At the boundary that partial trace is merged as a
// new path after the last matched node, and co-execution resumes with the
// grown graph: a path seen once is co-executed the next time.
//
// Threading: the program's thread only (the executor has its own). Ops the
// autograd engine runs on other threads (CUDA) are not taken over.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>

#include "graph/trace_graph.h"
#include "runtime/autograd_context.h"
#include "runtime/backward_segment.h"
#include "runtime/executor.h"
#include "runtime/interception.h"
#include "runtime/recorder.h"
#include "runtime/validator.h"

namespace terra::runtime {

// Where the program waited for the executor: one Python location (and what
// made it wait there), aggregated.
struct WaitPoint {
  std::vector<graph::Frame> frames;  // the program's frames, innermost last
  std::string what;                  // "aten::_local_scalar_dense", "numpy()", ...
  uint64_t count = 0;
  double wait_s = 0;
};

// Where the program left the TraceGraph (a fallback), aggregated: its
// location, what it issued there (an op with its first input's shape, or the
// end of the iteration), and the node it left after, whose successors are
// what the graph expected instead.
struct FallbackPoint {
  std::vector<graph::Frame> frames;  // the program's frames, innermost last
  std::string what;
  graph::NodeIndex after = graph::kEntry;
  uint64_t count = 0;
};

struct CoExecutionStats {
  uint64_t submitted = 0;  // ops handed to the executor
  uint64_t eager = 0;      // ops run here: views, fetches, unpredictable nodes
  uint64_t fetches = 0;    // drains before a value read
  uint64_t divergences = 0;
  // The executor's: seconds busy, seconds the program waited for it, inputs fed by value.
  double executor_busy_s = 0;
  double fetch_wait_s = 0;
  uint64_t fed_by_value = 0;
  // Backward calls replayed as one segment, the ops they stood for, and
  // segments learned (confirmed by a second identical learning).
  uint64_t backward_replayed = 0;
  uint64_t backward_ops_replayed = 0;
  uint64_t backward_learned = 0;
  std::string backward_not_replayed;  // why the first backward not replayed was not
  // Tasks of the program's queued in program order (collectives launched and
  // waited for by the executor instead of a drain).
  uint64_t tasks_queued = 0;

  // Adds another run's counts.
  CoExecutionStats& operator+=(const CoExecutionStats& other) {
    submitted += other.submitted;
    eager += other.eager;
    fetches += other.fetches;
    divergences += other.divergences;
    executor_busy_s += other.executor_busy_s;
    fetch_wait_s += other.fetch_wait_s;
    fed_by_value += other.fed_by_value;
    backward_replayed += other.backward_replayed;
    backward_ops_replayed += other.backward_ops_replayed;
    backward_learned += other.backward_learned;
    tasks_queued += other.tasks_queued;
    if (backward_not_replayed.empty()) backward_not_replayed = other.backward_not_replayed;
    return *this;
  }
};

class CoExecutor final : public OpObserver {
 public:
  // `graph` must outlive the co-executor and stay unchanged. `synchronous`:
  // debug mode, each op runs as soon as it is validated.
  // `locator` and `recorder` (shared with the recorder, not owned) take over
  // after a divergence.
  // `learned`: the backward segments a previous co-executor learned on the
  // same `graph` object (backward_memory()), so that co-execution resumed on
  // an unchanged graph (auto mode's probe alternates with eager) does not
  // learn them again; null for none.
  struct BackwardMemory;
  CoExecutor(const graph::TraceGraph* graph, OpLocator* locator, Recorder* recorder,
             bool synchronous, WaitWrapper around_wait = {},
             std::shared_ptr<BackwardMemory> learned = nullptr);
  ~CoExecutor() override;
  std::shared_ptr<BackwardMemory> backward_memory() const { return memory_; }

  bool TakeOver(const c10::OperatorHandle& op, torch::jit::Stack* stack) override;
  // Only called for ops not taken over; recorded after a divergence.
  void OnOp(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> inputs) override;
  void OnOpEnd(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> outputs) override;
  void OnOpFailed(const c10::OperatorHandle& op) override;

  // Python reads a value directly (numpy(), print, ...; `what` names the
  // read): make it real.
  void Fetch(const char* what = "a direct read");
  // Python only reads `t` (print, tolist, save): waits for the ops that write
  // it, not for everything queued.
  void FetchValue(const at::Tensor& t, const char* what);
  // An iteration boundary. kFollowed: the iteration followed the graph.
  // kLearned: it left the graph (or ended where the graph does not end); the
  // path it took instead was recorded and merged into the recorder's graph,
  // and the caller restarts co-execution on the grown graph.
  enum class Boundary { kFollowed, kLearned };
  Boundary EndIteration();

  // `root.backward()` (no gradient, no retained or created graph, no
  // inputs=): kReplayed when a learned segment ran in its place (the leaves'
  // .grad are set, the graph's saved tensors released); kLearning when the
  // caller must run it (the engine, op by op) and then call BackwardEnd;
  // kNotTaken when the caller runs it as usual.
  enum class BackwardStart { kNotTaken, kReplayed, kLearning };
  // `hook_state`: a word from the owners of deferrable hooks (DDP's
  // no_sync), part of the segment's key.
  BackwardStart BackwardBegin(const at::Tensor& root, uint64_t hook_state = 0);
  void BackwardEnd(bool completed);
  // A deferrable post-accumulate-grad hook of `leaf` starts / ends
  // (terra._tracing's trampoline): while learning, its ops are validated and
  // co-executed but not part of the segment, and where it ran is learned.
  void HookBegin(const at::Tensor& leaf);
  void HookEnd();
  // Runs `task` on the executor in program order, holding `tensors`
  // (ordinary memory it reads or writes directly, not through ATen; no
  // future) and counting them as touched until it has run: a collective on
  // them launched, or waited for, without draining the executor. False (the
  // caller does it the drained way) after a divergence, or for a future.
  bool QueueTask(std::function<void()> task, std::vector<at::Tensor> tensors, std::string where);
  bool diverged() const { return diverged_; }
  // This co-executor's counts, its executor's included.
  CoExecutionStats stats() const {
    CoExecutionStats s = stats_;
    s.executor_busy_s = executor_.busy_seconds();
    s.fetch_wait_s = executor_.drain_wait_seconds();
    s.fed_by_value = executor_.fed_by_value();
    return s;
  }
  // Waits by program location, in first-seen order.
  const std::vector<WaitPoint>& wait_points() const { return wait_points_; }
  // Fallbacks by program location, in first-seen order (nodes of the graph
  // this co-executor was given).
  const std::vector<FallbackPoint>& fallback_points() const { return fallback_points_; }
  Executor& executor() { return executor_; }

 private:
  // kRestride: an in-place op that changes only its argument's metadata
  // (transpose_): a view where no queued Work holds the tensor, else kEager.
  enum class Kind : uint8_t { kView, kRestride, kInPlace, kFetch, kCompute, kEager };
  struct OpKind {
    Kind kind = Kind::kEager;
    std::vector<int> returned_args;  // in-place: argument index each return aliases
    bool writes = false;             // writes any argument
    bool out_variant = false;        // in place: an out= op (may resize its out arguments)
    bool list_return = false;        // compute: one Tensor[] return
    size_t tensor_returns = 0;       // compute: Tensor returns (no list)
    // compute: the index of a `bool[] output_mask` argument (the backward
    // ops that return undefined tensors where the mask is false), or -1.
    int output_mask = -1;
    // The index of a `Generator?` argument (the random ops), or -1.
    int generator_arg = -1;
  };
  const OpKind& KindOf(const c10::OperatorHandle& op);
  void Diverge(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> inputs);
  // Counts a fallback at the program's current location.
  void NoteFallback(const std::string& what, graph::NodeIndex after);
  // The program's current frames into frames_; a key for them and `what`.
  uint64_t LocateHere(const std::string& what);
  // Whether an op on these arguments can run here at once, in program
  // order, without a drain: every tensor is in ordinary memory that no
  // queued Work reads or writes, and it draws nothing from the default
  // generator (which queued random ops draw from in program order).
  bool RunsNow(const OpKind& kind, c10::ArrayRef<c10::IValue> inputs) const;
  // Whether the op must run on the program's thread, once its inputs are
  // real: it draws from a generator the program passed (whose state the
  // program may read or reseed at any time), or it writes memory the
  // program reaches without ATen (DirectMemory).
  bool RunsInProgramTime(const OpKind& kind, c10::ArrayRef<c10::IValue> inputs) const;
  // Whether the op draws from the default CPU generator (a random op given
  // no generator, or that one): queued random ops draw from it in program
  // order on the executor, so this one may not run here ahead of them.
  static bool DrawsFromDefaultGenerator(const OpKind& kind, c10::ArrayRef<c10::IValue> inputs);
  // Whether the op just validated (at `node`) has only plain strided
  // tensors in and out, which the executor can run on futures.
  bool Strided(const graph::GraphNode& node) const;
  // Whether an out= op can be queued: each out argument either has the
  // layout the node recorded (no resize happens: the node's identity fixed
  // the inputs' layouts), or is an empty tensor no other tensor shares and no
  // queued Work holds, which the program's thread grows to that layout on a
  // new future first (`torch.arange` writes through `empty({0})`); `grow`
  // says which, by return. False: run it eagerly.
  bool OutsQueueable(const OpKind& kind, const graph::GraphNode& node,
                     c10::ArrayRef<c10::IValue> inputs, std::vector<bool>* grow) const;
  // Drains, charging the wait to the program's current location.
  void DrainAt(const std::string& what);
  // Waits for the ops that write these values (only), charged likewise.
  void AwaitAt(c10::ArrayRef<c10::IValue> values, const std::string& what);
  void ChargeWait(double waited, const std::string& what);

  // Backward segments (docs/coexecution.md, "The backward as one unit").
  // Where a segment's external value comes from: a Work of this iteration's
  // forward (by the ordinal of its op among the iteration's validated ops),
  // or a leaf's existing gradient. kFed: memory the program can write behind
  // ATen's back (numpy's), which the forward op was fed by value; a replay
  // copies it as it is when the backward runs, as the op-by-op backward does.
  struct ExternalSource {
    enum Kind : uint8_t { kOutput, kSlotArg, kHeld, kLeafGrad, kFed, kLeafData } kind = kOutput;
    uint32_t ordinal = 0;
    uint32_t index = 0;    // future, slot argument, argument, or leaf index
    int32_t element = -1;  // kHeld, kFed: the list element
    bool operator==(const ExternalSource&) const = default;
  };
  // The references a forward Work held, kept until the iteration's backward.
  struct ForwardRecord {
    std::vector<c10::intrusive_ptr<Slot>> outputs;
    std::vector<c10::intrusive_ptr<Slot>> slot_args;
    struct Held {
      uint32_t arg = 0;
      int32_t element = -1;
      c10::Storage storage;
      int64_t offset = 0;  // the tensor's storage offset
      bool fed = false;    // the program's memory the Work was fed a copy of
      TensorLayout layout;  // fed: the program's tensor
    };
    std::vector<Held> held;
  };
  // Where validation stands: the validator's node, the path hash and op
  // ordinal of the iteration so far, and the locator's state. A replay moves
  // there instead of validating the ops it stands for.
  struct Point {
    graph::NodeIndex position = graph::kEntry;
    uint64_t path = 0;
    uint32_t ordinal = 0;
    OpLocator::State locator;
    void Hash(graph::HashWriter& h) const {
      h.U32(position);
      h.U64(path);
      h.U32(ordinal);
    }
  };
  Point Here() const { return {validator_.position(), path_hash_, op_ordinal_, locator_->Save()}; }
  void MoveTo(const Point& p) {
    validator_.JumpTo(p.position);
    locator_->Restore(p.locator);
    path_hash_ = p.path;
    op_ordinal_ = p.ordinal;
  }
  struct LearnedBackward {
    std::shared_ptr<BackwardSegment> segment;
    std::vector<ExternalSource> externals;
    struct NewGrad {
      uint32_t leaf = 0;
      uint32_t value = 0;
      TensorLayout layout;  // the .grad AccumulateGrad made, on the value's memory
      uint32_t hook = 0;    // the first hook call (index in hooks) that saw it; hooks.size(): none
      uint32_t same_as = 0; // the first NewGrad of the same value (itself if none): one future
    };
    std::vector<NewGrad> new_grads;
    // The deferrable hooks the engine called, in order. A replay commits the
    // segment in pieces that end where a hook validated ops or waited
    // (`issued`), runs the hooks up to that one there, from the validator's,
    // path's and locator's state the hook started with, and checks they end
    // where they ended; a hook that issued nothing runs before the next one
    // that does (or at the end).
    struct HookPoint {
      uint32_t after_op = 0;  // segment ops before it
      uint32_t leaf = 0;      // walk leaf index
      bool issued = false;
      Point before;
      Point after;
    };
    std::vector<HookPoint> hooks;
    Point end;  // after the backward's last op and hook
    uint64_t content = 0;
    bool ready = false;
    int disagreements = 0;
  };
 public:
  // Learned segments by key, and which forward Works they read (by ordinal).
  struct BackwardMemory {
    std::unordered_map<uint64_t, LearnedBackward> by_key;
    std::vector<uint8_t> needed;
  };

 private:
  struct Learning {
    uint64_t key = 0;
    AutogradGraphWalk walk;
    std::vector<const c10::TensorImpl*> grads_before;
    uint64_t sequence_before = 0;  // autograd's next sequence number when it started
    const char* failed = nullptr;
    LearnedBackward learned;
    std::unordered_map<const Slot*, uint32_t> value_of_slot;  // internal values
    std::vector<c10::intrusive_ptr<Slot>> slots;  // keeps value_of_slot's keys from being reused
    std::unordered_map<const Slot*, ExternalSource> source_of_slot;
    // Ordinary tensors by storage and storage offset: a tensor the backward
    // reads is the one a forward op held where it starts at the same place
    // (a saved input, or a view of it such as weight.t().t()). Its layout is
    // then relative to that tensor's, which may move (a batch sliced from a
    // dataset tensor at a new offset each step).
    struct Named {
      ExternalSource source;
      TensorLayout fed;  // kFed: the program's tensor the forward op was fed
    };
    std::multimap<std::pair<const c10::StorageImpl*, int64_t>, Named> source_of_storage;  // in holding order
    std::vector<ExternalSource> externals;  // by external index
    std::vector<uint8_t> external_written;
    graph::HashWriter content;
    bool in_hook = false;
    int nested_hooks = 0;
    uint64_t fetches_before_hook = 0;
    std::vector<uint32_t> grad_first_hook;  // by leaf: as NewGrad::hook
  };
  // Marks the learning failed unless a deferrable hook runs (its ops are not
  // the segment's).
  void FailLearning(const char* why) {
    if (learning_ && !learning_->in_hook && learning_->failed == nullptr) learning_->failed = why;
  }
  // Leaves the graph after node `after` (the last one followed): the rest of
  // the iteration runs eagerly and is recorded. Diverge's, and a replayed
  // backward's where a hook took another path than learned.
  void DivergeHere(const std::string& what, graph::NodeIndex after);
  void OnCommit(const Work& work);
  void Record(const Work& work);
  void Capture(const Work& work);
  uint32_t ExternalIndex(const ExternalSource& source);
  bool Replay(LearnedBackward& learned, const AutogradGraphWalk& walk);
  void NoteNotReplayed(const char* why);

  const graph::TraceGraph* graph_;
  Recorder* recorder_;
  Validator validator_;
  Executor executor_;
  std::unordered_map<const c10::OperatorName*, OpKind> kinds_;
  bool diverged_ = false;  // recording the rest of the iteration
  graph::NodeIndex diverged_after_ = graph::kEntry;
  CoExecutionStats stats_;
  OpLocator* locator_;
  std::vector<graph::Frame> frames_;  // scratch
  std::vector<WaitPoint> wait_points_;
  // Backward segments: the validated ops of this iteration so far (count,
  // path, fed values of ops that recorded autograd functions), the forward
  // Works' records, the learned segments by key.
  const bool segments_enabled_;
  // TERRA_DEBUG_SEGMENTS: 1 prints each backward's key and learning, 2 also
  // each captured op (0: quiet).
  const int debug_segments_;
  uint32_t op_ordinal_ = 0;
  uint64_t path_hash_ = 0;
  uint64_t fed_hash_ = 0;
  bool record_all_ = true;   // this iteration records every forward Work
  bool record_next_ = false;  // and the next one
  std::vector<ForwardRecord> records_;
  size_t records_used_ = 0;
  std::vector<int32_t> record_at_;  // by ordinal: index in records_, or -1
  std::shared_ptr<BackwardMemory> memory_;
  std::unique_ptr<Learning> learning_;
  std::unordered_map<uint64_t, size_t> wait_index_;  // hash of (frames, what) -> wait_points_
  std::vector<FallbackPoint> fallback_points_;
  std::unordered_map<uint64_t, size_t> fallback_index_;  // hash of (frames, what, after)
};

}  // namespace terra::runtime
