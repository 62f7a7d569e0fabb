#include "runtime/autograd_context.h"

#include <ATen/SequenceNumber.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>

#include <limits>
#include <typeinfo>

#include "graph/node.h"

namespace terra::runtime {

BackwardContext CurrentBackward() {
  // An intrusive_ptr in PyTorch 2.15, a raw pointer in older releases; both
  // test and dereference alike.
  auto node = torch::autograd::get_current_node();
  if (!node) return {};
  BackwardContext ctx;
  ctx.active = true;
  ctx.sequence_nr = node->sequence_nr();
  // AccumulateGrad and graph roots carry the maximum sequence number: they
  // have no forward op.
  ctx.has_forward = ctx.sequence_nr != std::numeric_limits<uint64_t>::max();
  // The mangled type name is the same in every process built from the same
  // sources (node->name() demangles, which costs microseconds).
  ctx.kind = graph::Hash64(typeid(*node).name());
  if (!ctx.has_forward) {
    if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(&*node)) {
      ctx.accumulates_into = acc->variable.unsafeGetTensorImpl();
    }
  }
  return ctx;
}

uint64_t NextSequenceNr() { return at::sequence_number::peek(); }

}  // namespace terra::runtime
