// What the autograd engine is doing on the calling thread, for locating the
// ops it issues (design.md §5: a backward op is located by the forward node
// that created its backward function).
//
// This pair isolates the autograd internals Terra reads (the evaluating Node,
// the per-thread sequence number); like the dispatcher, they are not a stable
// PyTorch API. Both functions only read thread-local state: call them on the
// op's own thread, from any thread.
#pragma once

#include <cstdint>

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

// The backward function the autograd engine is evaluating on this thread.
BackwardContext CurrentBackward();

// The sequence number the next backward function created on this thread will
// get. Autograd creates an op's backward function just before the op's kernel
// runs, so a change seen at an op means "this op's backward function".
uint64_t NextSequenceNr();

}  // namespace terra::runtime
