#include "graph/trace_graph.h"

#include <algorithm>

#include "runtime/base/check.h"

namespace terra::graph {

size_t TraceGraph::EdgeCount() const {
  size_t n = entry_successors_.size();
  for (const GraphNode& g : nodes_) n += g.successors.size();
  return n;
}

const std::vector<Edge>& TraceGraph::Successors(NodeIndex from) const {
  if (from == kEntry) return entry_successors_;
  return nodes_.at(from).successors;
}

std::vector<Edge>& TraceGraph::MutableSuccessors(NodeIndex from) {
  if (from == kEntry) return entry_successors_;
  return nodes_.at(from).successors;
}

std::vector<NodeIndex> TraceGraph::BranchPoints() const {
  std::vector<NodeIndex> out;
  for (NodeIndex i = 0; i < nodes_.size(); ++i) {
    if (nodes_[i].successors.size() >= 2) out.push_back(i);
  }
  if (entry_successors_.size() >= 2) out.push_back(kEntry);
  return out;
}

std::optional<NodeIndex> TraceGraph::Find(const NodeIdentity& id, uint64_t hash) const {
  auto [begin, end] = by_hash_.equal_range(hash);
  for (auto it = begin; it != end; ++it) {
    if (nodes_[it->second].identity == id) return it->second;
  }
  return std::nullopt;
}

std::optional<NodeIndex> TraceGraph::Match(const TraceNode& tn) const {
  if (!tn.elided) return Find(tn.identity, tn.hash);
  auto it = by_hash_.find(tn.hash);
  if (it == by_hash_.end()) return std::nullopt;
  return it->second;
}

bool TraceGraph::AddEdge(NodeIndex from, NodeIndex to) {
  std::vector<Edge>& succ = MutableSuccessors(from);
  for (Edge& e : succ) {
    if (e.to == to) {
      ++e.count;
      return false;
    }
  }
  succ.push_back({to, 1});
  return true;
}

NodeIndex TraceGraph::AddNode(const TraceNode& tn) {
  TERRA_CHECK(nodes_.size() < kEntry, "TraceGraph is full");
  GraphNode g;
  g.identity = tn.identity;
  g.hash = tn.hash;
  g.num_outputs = tn.num_outputs;
  g.outputs = tn.outputs;
  g.outputs_hash = tn.outputs_hash;
  g.input_sources.resize(tn.inputs.size());
  nodes_.push_back(std::move(g));
  NodeIndex i = static_cast<NodeIndex>(nodes_.size() - 1);
  by_hash_.emplace(tn.hash, i);
  return i;
}

bool TraceGraph::AddTrace(const Trace& trace, NodeIndex after) {
  TERRA_CHECK(after == kEntry || after < nodes_.size(), "AddTrace: no node ", after, " to continue after");
  const std::vector<TraceNode>& tnodes = trace.nodes();
  // Validate first, so that a rejected trace leaves the graph untouched.
  for (size_t i = 0; i < tnodes.size(); ++i) {
    const TraceNode& tn = tnodes[i];
    std::optional<NodeIndex> found = Match(tn);
    TERRA_CHECK(found || !tn.elided, "trace node ", i, " was recorded as known (hash ", tn.hash,
                ") but the TraceGraph has no such node");
    if (found) {
      const NodeIdentity& id = nodes_[*found].identity;
      TERRA_CHECK(nodes_[*found].num_outputs == tn.num_outputs, QualifiedName(id), " at ",
                  ShortLocation(id.location), " returned ", tn.num_outputs,
                  " outputs, earlier traces saw ", nodes_[*found].num_outputs);
    }
  }
  bool changed = false;
  std::vector<NodeIndex> mapping(tnodes.size());
  std::vector<bool> sync_after(tnodes.size() + 1, false);
  for (const SyncPoint& s : trace.syncs()) {
    if (s.position <= tnodes.size()) sync_after[s.position] = true;
  }
  NodeIndex prev = after;
  for (size_t i = 0; i < tnodes.size(); ++i) {
    const TraceNode& tn = tnodes[i];
    std::optional<NodeIndex> found = Match(tn);
    NodeIndex idx = found ? *found : AddNode(tn);
    changed |= !found;
    mapping[i] = idx;
    GraphNode& g = nodes_[idx];
    ++g.visits;
    if (found && tn.outputs_hash != 0 && tn.outputs_hash != g.outputs_hash) {
      if (g.outputs_hash == 0) {
        g.outputs = tn.outputs;  // the first trace that recorded them
        g.outputs_hash = tn.outputs_hash;
      } else if (!g.outputs_vary) {
        g.outputs_vary = true;
        changed = true;
      }
    }
    for (size_t slot = 0; slot < tn.inputs.size() && slot < g.input_sources.size(); ++slot) {
      GraphValueSource src = tn.inputs[slot];
      if (src.kind == ValueKind::kNodeOutput) src.index = mapping[src.index];
      auto& sources = g.input_sources[slot];
      if (std::find(sources.begin(), sources.end(), src) == sources.end()) {
        sources.push_back(src);
        changed = true;
      }
    }
    if (sync_after[i + 1] && !g.sync_after) {
      g.sync_after = true;
      changed = true;
    }
    changed |= AddEdge(prev, idx);
    prev = idx;
  }
  changed |= AddEdge(prev, kExit);
  ++traces_added_;
  stable_for_ = changed ? 0 : stable_for_ + 1;
  return changed;
}

bool TraceGraph::operator==(const TraceGraph& other) const {
  return nodes_ == other.nodes_ && entry_successors_ == other.entry_successors_ &&
         traces_added_ == other.traces_added_ && stable_for_ == other.stable_for_;
}

}  // namespace terra::graph
