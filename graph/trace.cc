#include "graph/trace.h"

#include <utility>

#include "runtime/base/check.h"

namespace terra::graph {

namespace {

void CheckRef(const std::vector<TraceNode>& nodes, const ValueRef& ref, const char* where) {
  TERRA_CHECK(static_cast<uint8_t>(ref.kind) <= kMaxValueKind, where, ": unknown value kind ",
              static_cast<int>(ref.kind));
  if (ref.kind != ValueKind::kNodeOutput) return;
  TERRA_CHECK(ref.index < nodes.size(), where, ": input refers to node ", ref.index, ", but only ",
              nodes.size(), " nodes precede it");
  TERRA_CHECK(ref.output < nodes[ref.index].num_outputs, where, ": input refers to output ",
              ref.output, " of node ", ref.index, ", which has ", nodes[ref.index].num_outputs);
}

}  // namespace

uint32_t Trace::Add(NodeIdentity identity, std::vector<ValueRef> inputs, uint32_t num_outputs) {
  TERRA_CHECK(inputs.size() == identity.inputs.size(), QualifiedName(identity), ": ", inputs.size(),
              " inputs but metadata for ", identity.inputs.size());
  TERRA_CHECK(nodes_.size() < UINT32_MAX - 2, "trace too long");
  for (const ValueRef& ref : inputs) CheckRef(nodes_, ref, identity.op.c_str());
  TraceNode node;
  node.hash = StructuralHash(identity);
  node.identity = std::move(identity);
  node.inputs = std::move(inputs);
  node.num_outputs = num_outputs;
  nodes_.push_back(std::move(node));
  return static_cast<uint32_t>(nodes_.size() - 1);
}

uint32_t Trace::AddKnown(uint64_t hash, std::vector<ValueRef> inputs, uint32_t num_outputs) {
  TERRA_CHECK(nodes_.size() < UINT32_MAX - 2, "trace too long");
  for (const ValueRef& ref : inputs) CheckRef(nodes_, ref, "known node");
  TraceNode node;
  node.hash = hash;
  node.inputs = std::move(inputs);
  node.num_outputs = num_outputs;
  node.elided = true;
  nodes_.push_back(std::move(node));
  return static_cast<uint32_t>(nodes_.size() - 1);
}

void Trace::SetOutputs(uint32_t pos, std::vector<TensorMeta> metas, uint64_t hash) {
  TERRA_CHECK(pos < nodes_.size(), "SetOutputs: no node ", pos);
  TERRA_CHECK(metas.empty() || metas.size() == nodes_[pos].num_outputs, "SetOutputs: ", metas.size(),
              " metadata for ", nodes_[pos].num_outputs, " outputs");
  nodes_[pos].outputs = std::move(metas);
  nodes_[pos].outputs_hash = hash;
}

void Trace::AddSync(ValueRef value, Location location) {
  CheckRef(nodes_, value, "sync point");
  syncs_.push_back({static_cast<uint32_t>(nodes_.size()), value, std::move(location)});
}

}  // namespace terra::graph
