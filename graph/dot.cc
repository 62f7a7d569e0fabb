#include "graph/dot.h"

#include <sstream>

#include "graph/segments.h"

namespace terra::graph {

namespace {

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

std::string Id(NodeIndex i) {
  if (i == kEntry) return "entry";
  if (i == kExit) return "exit";
  return "n" + std::to_string(i);
}

}  // namespace

std::string ToDot(const TraceGraph& graph, const LocationLabel& where) {
  std::ostringstream out;
  out << "digraph TraceGraph {\n"
      << "  node [shape=box, fontname=\"monospace\"];\n"
      << "  entry [shape=circle, label=\"entry\"];\n"
      << "  exit [shape=doublecircle, label=\"exit\"];\n";
  std::vector<Segment> segments = Segments(graph);
  for (size_t s = 0; s < segments.size(); ++s) {
    out << "  subgraph cluster_s" << s << " {\n"
        << "    label=\"segment " << s << "\"; style=dashed;\n";
    for (NodeIndex i : segments[s].nodes) {
      const GraphNode& g = graph.node(i);
      std::string label = QualifiedName(g.identity) + "\n" +
                          (where ? where(g.identity.location) : ShortLocation(g.identity.location));
      if (g.sync_after) label += "\nsync";
      out << "    " << Id(i) << " [label=\"" << Escape(label) << "\"";
      if (graph.IsBranchPoint(i)) out << ", style=filled, fillcolor=orange";
      if (g.sync_after) out << ", peripheries=2";
      out << "];\n";
    }
    out << "  }\n";
  }
  auto edges = [&](NodeIndex from) {
    for (const Edge& e : graph.Successors(from)) {
      out << "  " << Id(from) << " -> " << Id(e.to) << " [label=\"" << e.count << "\"];\n";
    }
  };
  edges(kEntry);
  for (NodeIndex i = 0; i < graph.NodeCount(); ++i) edges(i);
  out << "}\n";
  return out.str();
}

}  // namespace terra::graph
