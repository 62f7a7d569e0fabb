// A backward segment: the ops one `loss.backward()` issued, learned by
// co-execution from a backward it validated op by op, and replayed by the
// executor as one Work (docs/coexecution.md, "The backward as one unit").
//
// The segment is a small dataflow program over storages:
//   - internal values: storages the segment's own ops produce (gradients in
//     flight), numbered in production order; each is freed after its last
//     use unless the program gets it (a leaf's new .grad);
//   - external values: storages from outside the segment (the forward's
//     saved values, parameters, the leaves' existing gradients), handed to
//     the Work by the program's thread;
//   - each tensor argument is a storage plus the layout the op saw it with
//     (views of values were made on the program's thread and are not ops).
// Non-tensor arguments are the recorded ones. They are valid because the
// program's thread replays a segment only where the forward took the same
// path with the same fed values on the ops that recorded autograd functions,
// and the autograd graph has the same shape (runtime/coexecutor.h).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/util/SmallVector.h>

#include <cstdint>
#include <vector>

#include "graph/node.h"
#include "runtime/tensor_layout.h"

namespace terra::runtime {

struct SegmentArgument {
  uint32_t arg = 0;
  int32_t element = -1;  // -1: the argument itself, else the list element
  bool external = false;
  uint32_t value = 0;    // internal value id, or external index
  bool written = false;  // the op writes it (an external: the program must wait for the segment)
  TensorLayout layout;
};

struct SegmentOp {
  c10::OperatorHandle op;
  const graph::Location* location = nullptr;  // owned by the graph
  torch::jit::Stack inputs;  // as recorded; tensor positions are placeholders
  std::vector<SegmentArgument> tensors;
  // The internal value id of each defined tensor the op returns, in order
  // (what a Work's futures would be).
  std::vector<uint32_t> outputs;
  std::vector<uint32_t> frees;  // internal values whose last use this op is
};

struct SegmentValue {
  graph::TensorMeta meta;  // the layout a future of it has
  size_t nbytes = 0;
  uint32_t last_use = 0;   // the last op that reads or writes it
  bool to_program = false; // the program gets it (a leaf's new gradient): never freed early
  uint32_t produced_by = 0; // the op that produces it
};

struct BackwardSegment {
  std::vector<SegmentOp> ops;
  std::vector<SegmentValue> values;
  std::vector<uint8_t> external_written;  // by external index
};

}  // namespace terra::runtime
