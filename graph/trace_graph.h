// The TraceGraph: every traced iteration merged into one control-flow graph.
//
// Merge rule. A graph node is keyed by its NodeIdentity alone (hash, then full
// equality), never by its predecessor. Because the identity contains the
// program location (frames, loop context, ordinal; or the forward node for
// backward ops), equal identity already means "the same op, issued from the
// same place, in the same context". Each trace is then a walk
//   kEntry -> n1 -> n2 -> ... -> nk -> kExit
// and merging adds the walk's nodes and edges (with traversal counts).
//   - Identical traces add nothing: the graph stops growing (StableFor rises).
//   - Divergence: a node with several distinct successors is a branch point;
//     paths that reconverge reach the same nodes again (a join).
//   - Loops: the body's nodes recur with equal identities, so the second trip
//     adds one back edge (last body node -> first body node) and later trips
//     add nothing. The graph's size is independent of the trip count.
// Keying by (identity, predecessor), a trie, would give exact paths but grow
// with every trip count and every interleaving; identity keying is an
// over-approximation (it admits paths no trace took, e.g. any trip count), which
// the validator tolerates because it checks each op against the current
// node's successors, one step at a time.
//
// Value flow: for each tensor input slot a node keeps the distinct sources seen
// (a graph node's output, or an external input); a loop-carried value shows as
// two sources (before the loop, previous trip).
// Sync points: a read after trace node n marks n's graph node `sync_after`
// (a read at position 0 is at the iteration boundary and marks nothing).
//
// Stability: AddTrace returns whether the structure changed (a node, an edge,
// a value source, a sync mark or an outputs_vary mark was added; traversal
// counts do not count).
// StableFor() is the number of consecutive AddTrace calls that changed nothing.
//
// Threading: not thread-safe. Recorders build Traces per thread; one thread
// merges them. Indices are stable: nodes are only ever appended.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "graph/trace.h"

namespace terra::graph {

using NodeIndex = uint32_t;
inline constexpr NodeIndex kEntry = 0xFFFFFFFEu;  // start of an iteration (a source only)
inline constexpr NodeIndex kExit = 0xFFFFFFFFu;   // end of an iteration (a target only)

struct Edge {
  NodeIndex to = kExit;
  uint64_t count = 0;  // traces that took this edge, counting repeats

  bool operator==(const Edge&) const = default;
};

// A value source in graph terms: for kNodeOutput, index is a NodeIndex.
using GraphValueSource = ValueRef;

struct GraphNode {
  NodeIdentity identity;
  uint64_t hash = 0;
  uint32_t num_outputs = 0;
  std::vector<Edge> successors;                              // distinct targets, first-seen order
  std::vector<std::vector<GraphValueSource>> input_sources;  // per tensor input slot
  bool sync_after = false;
  uint64_t visits = 0;
  // The outputs' metadata as first recorded, and its MetasHash. When a later
  // trace records other output metadata for the node (it depends on values
  // that are fed, not on the identity), outputs_vary is set: co-execution
  // cannot predict this node's outputs and falls back at it.
  std::vector<TensorMeta> outputs;
  uint64_t outputs_hash = 0;
  bool outputs_vary = false;

  bool operator==(const GraphNode&) const = default;
};

class TraceGraph {
 public:
  // Merges one iteration. Returns true when the structure changed. TERRA_CHECKs
  // (before changing anything) that a node matching an existing identity has
  // the same number of outputs, and that every elided trace node
  // (Trace::AddKnown) names a node of this graph.
  bool AddTrace(const Trace& trace) { return AddTrace(trace, kEntry); }
  // Merges a trace that starts in the middle of an iteration, right after
  // node `after` (a path co-execution had not seen, recorded from there on):
  // its first node becomes a successor of `after` instead of kEntry's.
  bool AddTrace(const Trace& trace, NodeIndex after);

  size_t NodeCount() const { return nodes_.size(); }
  // Distinct edges, including those leaving kEntry and those reaching kExit.
  size_t EdgeCount() const;
  const std::vector<GraphNode>& nodes() const { return nodes_; }
  const GraphNode& node(NodeIndex i) const { return nodes_.at(i); }
  // Successors of a node or of kEntry.
  const std::vector<Edge>& Successors(NodeIndex from) const;
  // Nodes (and kEntry) with two or more distinct successors, in index order
  // (kEntry last).
  std::vector<NodeIndex> BranchPoints() const;
  bool IsBranchPoint(NodeIndex i) const { return Successors(i).size() >= 2; }
  std::optional<NodeIndex> Find(const NodeIdentity& id, uint64_t hash) const;
  // Whether some node has this structural hash.
  bool ContainsHash(uint64_t hash) const { return by_hash_.count(hash) != 0; }

  uint64_t TracesAdded() const { return traces_added_; }
  uint64_t StableFor() const { return stable_for_; }
  // At least k traces were added and the last k changed nothing.
  bool IsStable(uint64_t k) const { return traces_added_ >= k && stable_for_ >= k; }

  // Structure, counts and stability state; the hash index is derived.
  bool operator==(const TraceGraph& other) const;

 private:
  friend TraceGraph Deserialize(std::string_view bytes);

  // Returns true when the edge is new.
  bool AddEdge(NodeIndex from, NodeIndex to);
  NodeIndex AddNode(const TraceNode& tn);
  std::optional<NodeIndex> Match(const TraceNode& tn) const;
  std::vector<Edge>& MutableSuccessors(NodeIndex from);

  std::vector<GraphNode> nodes_;
  std::vector<Edge> entry_successors_;
  std::unordered_multimap<uint64_t, NodeIndex> by_hash_;
  uint64_t traces_added_ = 0;
  uint64_t stable_for_ = 0;
};

}  // namespace terra::graph
