#include "graph/segments.h"

namespace terra::graph {

namespace {

bool EndsRun(const TraceGraph& graph, NodeIndex i) {
  const GraphNode& g = graph.node(i);
  return g.successors.size() != 1 || g.sync_after;
}

}  // namespace

std::vector<Segment> Segments(const TraceGraph& graph) {
  const size_t n = graph.NodeCount();
  // Distinct predecessors per node; kEntry and run-ending predecessors force a start.
  std::vector<uint32_t> preds(n, 0);
  std::vector<bool> start(n, false);
  for (const Edge& e : graph.Successors(kEntry)) {
    if (e.to == kExit) continue;
    ++preds[e.to];
    start[e.to] = true;
  }
  for (NodeIndex i = 0; i < n; ++i) {
    bool ends = EndsRun(graph, i);
    for (const Edge& e : graph.node(i).successors) {
      if (e.to == kExit) continue;
      ++preds[e.to];
      if (ends) start[e.to] = true;
    }
  }
  for (NodeIndex i = 0; i < n; ++i) {
    if (preds[i] != 1) start[i] = true;
  }

  std::vector<Segment> out;
  std::vector<bool> covered(n, false);
  auto walk = [&](NodeIndex first) {
    Segment seg;
    NodeIndex cur = first;
    while (true) {
      seg.nodes.push_back(cur);
      covered[cur] = true;
      if (EndsRun(graph, cur)) break;
      NodeIndex next = graph.node(cur).successors.front().to;
      if (next == kExit || start[next] || covered[next]) break;
      cur = next;
    }
    seg.ends_at_branch = graph.IsBranchPoint(cur);
    seg.ends_at_sync = graph.node(cur).sync_after;
    out.push_back(std::move(seg));
  };
  for (NodeIndex i = 0; i < n; ++i) {
    if (start[i]) walk(i);
  }
  // Every node of a merged graph is reachable from kEntry, so each cycle holds
  // a start; this only guards graphs that arrive from elsewhere.
  for (NodeIndex i = 0; i < n; ++i) {
    if (!covered[i]) walk(i);
  }
  return out;
}

std::vector<size_t> SegmentOf(const TraceGraph& graph, const std::vector<Segment>& segments) {
  std::vector<size_t> of(graph.NodeCount(), 0);
  for (size_t s = 0; s < segments.size(); ++s) {
    for (NodeIndex i : segments[s].nodes) of[i] = s;
  }
  return of;
}

}  // namespace terra::graph
