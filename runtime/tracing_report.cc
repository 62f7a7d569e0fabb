#include "runtime/tracing_report.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "graph/segments.h"

namespace terra::runtime {
namespace {

using graph::GraphNode;
using graph::NodeIndex;
using graph::TraceGraph;


void More(std::ostringstream& out, size_t shown, size_t total) {
  if (total > shown) out << "    ... and " << (total - shown) << " more\n";
}

}  // namespace

LocationNamer::LocationNamer(const TraceGraph& graph, Describer describe)
    : graph_(graph), describe_(std::move(describe)) {
  for (NodeIndex i = 0; i < graph.NodeCount(); ++i) by_hash_.emplace(graph.node(i).hash, i);
}

std::string LocationNamer::Where(const graph::Location& loc) const { return Where(loc, 0); }

std::string LocationNamer::Where(const graph::Location& loc, int depth) const {
  if (!loc.IsBackward()) return describe_(loc.frames);
  auto it = by_hash_.find(loc.backward_of);
  // A backward function with no forward op (AccumulateGrad, a hook).
  if (it == by_hash_.end() || depth > 8) return "autograd (no forward op)";
  const GraphNode& fwd = graph_.node(it->second);
  return "backward of " + graph::QualifiedName(fwd.identity) + " at " +
         Where(fwd.identity.location, depth + 1);
}

std::string LocationNamer::Node(NodeIndex i) const {
  if (i == graph::kExit) return "end of iteration";
  const GraphNode& g = graph_.node(i);
  std::string shape;
  if (!g.identity.inputs.empty()) {
    // The first input's shape tells apart the variants of one op at one place.
    shape = " [";
    const std::vector<int64_t>& sizes = g.identity.inputs.front().sizes;
    for (size_t d = 0; d < sizes.size(); ++d) shape += (d ? "x" : "") + std::to_string(sizes[d]);
    shape += "]";
  }
  return graph::QualifiedName(g.identity) + shape + " (" + Where(g.identity.location) + ")";
}

GraphSummary Summarize(const TraceGraph& graph) {
  GraphSummary s;
  s.nodes = graph.NodeCount();
  s.edges = graph.EdgeCount();
  s.branch_points = graph.BranchPoints().size();
  const std::vector<graph::Segment> segments = graph::Segments(graph);
  s.segments = segments.size();
  for (const graph::Segment& seg : segments) s.longest_segment = std::max(s.longest_segment, seg.nodes.size());
  std::unordered_map<uint64_t, size_t> variants;
  for (const GraphNode& g : graph.nodes()) {
    if (g.sync_after) ++s.sync_nodes;
    if (g.outputs_vary) ++s.outputs_vary;
    const size_t n = ++variants[graph::VariantKey(g.identity)];
    s.max_variants = std::max(s.max_variants, n);
  }
  return s;
}

std::string TracingReport(const ReportInput& in, const Describer& describe) {
  const TraceGraph& graph = *in.graph;
  const GraphSummary s = Summarize(graph);
  const RecorderStats& st = in.stats;
  LocationNamer where(graph, describe);
  std::ostringstream out;
  out << "Terra tracing report (rank " << in.rank << ", mode " << in.mode << ")\n";
  out << "  iterations traced: " << st.iterations;
  if (graph.TracesAdded() > 0) {
    out << "; TraceGraph unchanged for the last " << graph.StableFor();
    if (in.mode == "auto" && in.stable_after > 0) {
      out << (graph.IsStable(in.stable_after) ? " (stable: tracing stopped)" : " (not yet stable)");
    }
  }
  out << "\n";
  if (!st.ops_per_iteration.empty()) {
    const auto [lo, hi] = std::minmax_element(st.ops_per_iteration.begin(), st.ops_per_iteration.end());
    out << "  ops per iteration: " << st.ops_per_iteration.back() << " (last), min " << *lo << ", max "
        << *hi << "\n";
  }
  if (st.prologue_ops > 0) {
    out << "  set-up before the first iteration boundary: " << st.prologue_ops << " ops (not merged)\n";
  }
  if (st.ops_in_current > 0) out << "  ops after the last iteration boundary: " << st.ops_in_current << "\n";
  if (st.overflows > 0) {
    out << "  warning: " << st.overflows
        << " time(s) an iteration grew past the op limit without a boundary and was dropped; "
           "mark iterations with terra.iteration() (no optimizer step ends them)\n";
  }
  if (st.iterations == 0) {
    out << "  no iteration was traced: iterations end at an optimizer's step() or at "
           "terra.iteration()\n";
  }
  out << "  ops recorded: " << st.ops << "; sync points: " << st.syncs << "\n";
  out << "  TraceGraph: " << s.nodes << " nodes, " << s.edges << " edges, " << s.branch_points
      << " branch points, " << s.segments << " segments (longest " << s.longest_segment << " nodes)\n";

  const std::vector<NodeIndex> branches = graph.BranchPoints();
  if (!branches.empty()) {
    out << "  branch points (where the next op differed between iterations):\n";
    size_t shown = 0;
    for (NodeIndex b : branches) {
      if (shown == in.max_listed) break;
      ++shown;
      const std::vector<graph::Edge>& succ = graph.Successors(b);
      out << "    " << (b == graph::kEntry ? std::string("start of iteration") : where.Node(b)) << " -> "
          << succ.size() << " ways:\n";
      for (const graph::Edge& e : succ) {
        out << "      " << e.count << "x  " << where.Node(e.to) << "\n";
      }
    }
    More(out, shown, branches.size());
  }

  if (!in.syncs.empty()) {
    // One row per source line and read kind: frames that differ only below
    // the program's own code (a list comprehension, a helper) read the same.
    std::vector<std::pair<std::string, uint64_t>> rows;
    std::unordered_map<std::string, size_t> row_of;
    for (const SyncSummary& sync : in.syncs) {
      std::string text = where.Where(sync.location) + "  " + sync.op;
      auto [it, added] = row_of.emplace(text, rows.size());
      if (added) rows.emplace_back(std::move(text), 0);
      rows[it->second].second += sync.count;
    }
    std::stable_sort(rows.begin(), rows.end(),
                     [](const auto& a, const auto& b) { return a.second > b.second; });
    out << "  sync points (Python read a tensor's value):\n";
    size_t shown = 0;
    for (const auto& [text, count] : rows) {
      if (shown == in.max_listed) break;
      ++shown;
      out << "    " << count << "x  " << text << "\n";
    }
    More(out, shown, rows.size());
  }

  if (s.outputs_vary > 0) {
    out << "  ops whose output shapes changed with fed values: " << s.outputs_vary
        << " (co-execution cannot predict them and will fall back there)\n";
  }
  if (st.max_new_variants > 0) {
    out << "  shapes that changed between iterations: up to " << st.max_new_variants
        << " new variants of one op at one location";
    if (st.locations_over_bound > 0) {
      out << "; " << st.locations_over_bound << " locations passed the bound of " << kMaxShapeVariants
          << " (co-execution will run them eagerly)";
    }
    out << "\n";
  }
  return out.str();
}

}  // namespace terra::runtime
