// DOT (Graphviz) export of a TraceGraph, for `terrarun --debug` and for people.
//
// Each node is labelled with its qualified op name and short location; each
// segment (segments.h) is a dashed cluster; branch points are filled orange,
// nodes followed by a sync point get a double border and a "sync" line; edges
// carry their traversal counts. kEntry and kExit are small circles. Pure.
#pragma once

#include <functional>
#include <string>

#include "graph/trace_graph.h"

namespace terra::graph {

// `where` describes a node's location for people ("train.py:42 in step");
// empty: ShortLocation's code hashes.
using LocationLabel = std::function<std::string(const Location&)>;
std::string ToDot(const TraceGraph& graph, const LocationLabel& where = {});

}  // namespace terra::graph
