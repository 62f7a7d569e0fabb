// What the autograd engine is doing on the calling thread, for locating the
// ops it issues (design.md §5: a backward op is located by the forward node
// that created its backward function).
//
// This pair isolates the autograd internals Terra reads (the evaluating Node,
// the per-thread sequence number); like the dispatcher, they are not a stable
// PyTorch API. Both functions only read thread-local state: call them on the
// op's own thread, from any thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace terra::runtime {

struct BackwardContext {
  bool active = false;       // the thread is running a backward function
  bool has_forward = false;  // sequence_nr names a forward op (false: AccumulateGrad and the like)
  uint64_t sequence_nr = 0;  // the backward function's sequence number
  uint64_t kind = 0;         // stable hash of the backward function's type
  // For AccumulateGrad: the leaf it accumulates into (identifies the
  // function across iterations; nullptr otherwise).
  const void* accumulates_into = nullptr;
};

// The backward function the autograd engine is evaluating on this thread
// (or the one a ScopedBackwardFunction names).
BackwardContext CurrentBackward();

// While it lives, CurrentBackward() on this thread names `node` (a
// torch::autograd::Node* of a walked graph): a replayed backward runs a
// leaf's gradient hooks as if its AccumulateGrad were evaluating, as the
// engine does, so that their ops are located alike.
class ScopedBackwardFunction {
 public:
  explicit ScopedBackwardFunction(void* node);
  ~ScopedBackwardFunction();
  ScopedBackwardFunction(const ScopedBackwardFunction&) = delete;
  ScopedBackwardFunction& operator=(const ScopedBackwardFunction&) = delete;

 private:
  void* previous_;
};

// Post-accumulate-grad hooks a replayed backward may run itself, after the
// ops it replayed up to the leaf's accumulation (terra.distributed's DDP
// marks its own): the check, given the leaf, says whether all of its hooks
// are such. Set once by the Python bindings; none set: no hook is.
using DeferrableHookCheck = bool (*)(const at::Tensor& leaf);
void SetDeferrableHookCheck(DeferrableHookCheck check);
// Runs the leaf's post-accumulate-grad hooks, as AccumulateGrad does.
void RunPostAccumulateGradHooks(const at::Tensor& leaf);

// The sequence number the next backward function created on this thread will
// get. Autograd creates an op's backward function just before the op's kernel
// runs, so a change seen at an op means "this op's backward function".
uint64_t NextSequenceNr();

// The autograd graph `root.backward()` would run, walked from root's
// backward function (co-execution replays a learned backward segment instead
// of running the engine: docs/coexecution.md, "The backward as one unit").
// The signature covers what decides the ops the engine issues and what it
// writes: each function's type and edges, and whether each leaf has a
// gradient already, and which leaves have deferrable hooks. Not eligible: a
// graph with hooks (Python or C++, on functions or tensors, retain_grad,
// post-accumulate hooks other than deferrable ones), a custom
// function (Python code runs in its backward) or any function type outside
// PyTorch's generated set, anomaly mode.
struct AutogradGraphWalk {
  bool eligible = false;
  const char* why = "";  // when not eligible
  uint64_t signature = 0;
  std::vector<void*> nodes;           // torch::autograd::Node*, alive while root's graph is
  std::vector<at::Tensor> leaves;     // AccumulateGrad's variables, in walk order
  std::vector<void*> leaf_functions;  // their AccumulateGrad functions
};
AutogradGraphWalk WalkAutogradGraph(const at::Tensor& root);
// What the engine does to each function it ran when the graph is not
// retained: frees the saved tensors, so that a second backward fails as in
// eager and the saved futures are not kept alive.
void ReleaseSavedVariables(const AutogradGraphWalk& walk);

}  // namespace terra::runtime
