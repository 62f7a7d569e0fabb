// Segments: the maximal straight-line runs of a TraceGraph, the unit that
// optimization and CUDA-graph capture work on (design.md §5).
//
// A node starts a segment when it does not have exactly one predecessor (a
// join, or a node reached from several places), when its predecessor is
// kEntry, or when its predecessor is a branch point or has a sync point after
// it. A segment then follows the single successor edge and ends at a node that
// is a branch point, has a sync point after it, leads to kExit, or whose
// successor starts a segment. Every node lies in exactly one segment; a segment
// never contains a branch or a sync except at its last node. A pass: a pure
// function of the graph.
#pragma once

#include <vector>

#include "graph/trace_graph.h"

namespace terra::graph {

struct Segment {
  std::vector<NodeIndex> nodes;  // in execution order
  bool ends_at_branch = false;   // last node is a branch point
  bool ends_at_sync = false;     // Python reads a value after the last node

  bool operator==(const Segment&) const = default;
};

// Segments in the index order of their first node.
std::vector<Segment> Segments(const TraceGraph& graph);

// For each node, the index of its segment in Segments(graph).
std::vector<size_t> SegmentOf(const TraceGraph& graph, const std::vector<Segment>& segments);

}  // namespace terra::graph
