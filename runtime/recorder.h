// The tracing recorder (design.md §5): an OpObserver that turns every
// intercepted op into a graph::TraceNode of the current iteration's Trace,
// tracks tensors as values flowing between nodes, and merges each finished
// iteration into the TraceGraph.
//
// Per op:
//   identity  operator and overload; non-tensor arguments (ArgsEncoder); the
//             metadata of each tensor input (tensor lists and optional tensors
//             flattened in argument order); the location: Python frames from
//             the LocationSource, or, for an op the autograd engine issues,
//             the forward node that created the backward function (found
//             through autograd's per-thread sequence numbers; a backward
//             function with no forward op, such as AccumulateGrad, is located
//             by its type and the node before it). Consecutive ops from the
//             same location get increasing ordinals.
//   values    a tensor produced by a node of this iteration is that node's
//             output; any other tensor (a parameter, a batch from numpy, a
//             fresh allocation) is a program input, numbered in first-use
//             order within the iteration. Outputs are the op's returned
//             tensors or, for an op that returns none (`_foreach_add_`), its
//             mutated arguments; an in-place op's result is a new value of
//             the same tensor.
//   syncs     `_local_scalar_dense` (`.item()`, `bool(t)`) and every other op
//             whose result is a Python number is a sync point; OnSync records
//             the direct reads the dispatcher cannot see (`numpy()`, printing).
//
// Tensors are tracked by TensorImpl address with a weak reference, which pins
// the address (not the storage) until the iteration ends, so an address is
// never mistaken for a dead tensor's.
//
// Threading: OnOp/OnOpEnd/OnOpFailed/OnSync may be called from several
// threads (the program's thread and autograd's device threads as the fallback
// observer); one mutex guards the recording, and it is never held while the
// LocationSource runs or while a kernel runs. EndIteration and the read-only
// accessors take the same mutex.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "graph/trace.h"
#include "graph/trace_graph.h"
#include "runtime/interception.h"
#include "runtime/op_locator.h"
#include "runtime/tracing_types.h"
#include "runtime/value_table.h"

namespace terra::runtime {

class Recorder final : public OpObserver {
 public:
  // Ops one iteration may hold: a program that never reaches an iteration
  // boundary would otherwise grow its trace without bound.
  static constexpr uint32_t kDefaultMaxOpsPerIteration = 1u << 20;

  // `locations` is not owned and must outlive the recorder. With `shared`
  // (not owned), the recorder locates ops with that OpLocator, shared with a
  // co-executor, instead of one of its own.
  explicit Recorder(LocationSource* locations,
                    uint32_t max_ops_per_iteration = kDefaultMaxOpsPerIteration,
                    OpLocator* shared = nullptr);
  ~Recorder() override;
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  void OnOp(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> inputs) override;
  void OnOpEnd(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> outputs) override;
  void OnOpFailed(const c10::OperatorHandle& op) override;

  // Python read `tensor`'s value directly (`kind`: "numpy", "print", ...), at
  // the calling thread's current location.
  void OnSync(const at::Tensor& tensor, const std::string& kind);

  // Ends the current iteration: merges its trace into the TraceGraph (or,
  // with merge false, drops it: the prologue before the first boundary holds
  // set-up code, not an iteration) and starts an empty one. An empty trace is
  // dropped and does not count. Returns whether the graph's structure changed.
  // After an overflow (more than max_ops_per_iteration ops without a
  // boundary) the trace was dropped when it overflowed and recording resumes
  // here.
  bool EndIteration(bool merge = true);
  // Ends a partial iteration: one recorded from the middle of an iteration on
  // (after co-execution diverged there), merged as a path that continues
  // after graph node `after`.
  bool EndPartialIteration(graph::NodeIndex after);

  // TraceGraph().IsStable(k), without the copy.
  bool IsStable(uint64_t k) const;
  // Changes whenever a trace is merged: a copy of Graph() taken at the same
  // generation is the graph as it is now.
  uint64_t Generation() const;

  // Copies, taken under the lock.
  graph::TraceGraph Graph() const;
  RecorderStats Stats() const;
  std::vector<SyncSummary> Syncs() const;

  OpLocator& locator() { return *locator_; }

 private:
  struct OpInfo;

  const OpInfo& InfoFor(const c10::OperatorHandle& op);  // mu_ held
  graph::ValueRef Resolve(const at::Tensor& tensor);      // mu_ held
  void Track(const at::Tensor& tensor, graph::ValueRef ref);  // mu_ held
  void AddSyncLocked(graph::ValueRef value, const graph::Location& location, const std::string& op);

  bool EndIterationLocked(bool merge, graph::NodeIndex after);

  LocationSource* locations_;
  std::unique_ptr<OpLocator> own_locator_;
  OpLocator* locator_;
  const uint32_t max_ops_per_iteration_;
  mutable std::mutex mu_;
  bool overflowed_ = false;  // the current iteration passed the op limit; ops are ignored
  graph::Trace trace_;
  graph::TraceGraph graph_;
  std::unordered_map<const c10::OperatorName*, std::unique_ptr<OpInfo>> ops_;
  ValueTable values_;
  uint32_t next_input_ = 0;
  std::unordered_map<uint64_t, uint64_t> new_variants_;  // VariantKey -> variants added late
  std::vector<SyncSummary> syncs_;
  std::unordered_map<uint64_t, size_t> sync_index_;  // hash of (location, op) -> syncs_ index
  RecorderStats stats_;
};

}  // namespace terra::runtime
