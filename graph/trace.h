// One iteration as recorded: the nodes in program order, with the value flow
// between them, and the sync points where Python read a tensor's value.
//
// Values: every node input is a ValueRef, either output k of an earlier node of
// the same trace or an external input (a program input such as a parameter or
// data from numpy, a fresh allocation, a constant). External indices are the
// recorder's own numbering (parameter number, allocation number, ...).
//
// Threading: a Trace is built by one thread (the recorder keeps one per
// thread) and handed to the merging thread by value or const reference.
#pragma once

#include <cstdint>
#include <vector>

#include "graph/node.h"

namespace terra::graph {

enum class ValueKind : uint8_t {
  kNodeOutput = 0,       // index: producing node, output: which output
  kProgramInput = 1,     // index: recorder's input number
  kFreshAllocation = 2,  // index: recorder's allocation number
  kConstant = 3,         // index: recorder's constant number
};
inline constexpr uint8_t kMaxValueKind = 3;

struct ValueRef {
  ValueKind kind = ValueKind::kNodeOutput;
  uint32_t index = 0;
  uint32_t output = 0;

  static ValueRef Output(uint32_t node, uint32_t output = 0) {
    return {ValueKind::kNodeOutput, node, output};
  }
  static ValueRef External(ValueKind kind, uint32_t index) { return {kind, index, 0}; }
  bool operator==(const ValueRef&) const = default;
};

struct TraceNode {
  NodeIdentity identity;         // empty when elided
  uint64_t hash = 0;             // StructuralHash(identity), computed once by Trace::Add
  std::vector<ValueRef> inputs;  // one per identity.inputs entry
  uint32_t num_outputs = 0;
  // Output metadata (empty when elided) and MetasHash of it (always set when
  // the recorder knows the outputs; 0: not recorded).
  std::vector<TensorMeta> outputs;
  uint64_t outputs_hash = 0;
  // The identity was left out because the TraceGraph this trace will merge
  // into already has a node with this hash (Trace::AddKnown).
  bool elided = false;
};

// Python read `value` after the first `position` nodes of the trace had been
// issued (position 0: before any node).
struct SyncPoint {
  uint32_t position = 0;
  ValueRef value;
  Location location;
};

class Trace {
 public:
  // Appends a node and returns its position. TERRA_CHECKs that there is one
  // input per tensor metadata entry and that every kNodeOutput input names an
  // output of an earlier node.
  uint32_t Add(NodeIdentity identity, std::vector<ValueRef> inputs, uint32_t num_outputs);
  // The outputs' metadata of the node at `pos` (empty metas for an elided
  // node: the hash alone). The TraceGraph keeps the first trace's metadata
  // and marks a node whose output metadata differs between traces.
  void SetOutputs(uint32_t pos, std::vector<TensorMeta> metas, uint64_t hash);
  // Appends a node of a known graph node by its structural hash alone: the
  // recorder's fast path, which builds no identity for the ops the graph has
  // already seen. The 64-bit hash is trusted (a collision would merge two
  // different ops). Merging the trace into a graph without that hash fails.
  uint32_t AddKnown(uint64_t hash, std::vector<ValueRef> inputs, uint32_t num_outputs);
  // Room for n nodes (a recorder expects the next iteration to look like the last).
  void Reserve(size_t n) { nodes_.reserve(n); }
  // Records a read of `value` at the current position.
  void AddSync(ValueRef value, Location location);

  const std::vector<TraceNode>& nodes() const { return nodes_; }
  const std::vector<SyncPoint>& syncs() const { return syncs_; }
  size_t size() const { return nodes_.size(); }

 private:
  std::vector<TraceNode> nodes_;
  std::vector<SyncPoint> syncs_;
};

}  // namespace terra::graph
