// The tracing report (`terrarun --report`, `terra.report()`): what tracing
// saw, in terms a user can act on. Pure functions of their arguments; no
// ATen, so it compiles fast and is unit-tested without tensors.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "graph/trace_graph.h"
#include "runtime/tracing_types.h"

namespace terra::runtime {

struct GraphSummary {
  size_t nodes = 0;
  size_t edges = 0;
  size_t branch_points = 0;
  size_t segments = 0;
  size_t longest_segment = 0;
  size_t sync_nodes = 0;            // nodes followed by a sync point
  size_t outputs_vary = 0;          // nodes whose output metadata changed between iterations
  size_t max_variants = 0;          // most node variants at one location (a loop over
                                    // parameters of many shapes has many)
};

GraphSummary Summarize(const graph::TraceGraph& graph);

// Describes a location for a person ("train.py:42 in step").
using Describer = std::function<std::string(const std::vector<graph::Frame>&)>;

// Names locations of `graph`'s nodes: Python frames through the describer; a
// backward op as "backward of <forward op> at <its location>". Keeps a
// reference to `graph`.
class LocationNamer {
 public:
  LocationNamer(const graph::TraceGraph& graph, Describer describe);
  std::string Where(const graph::Location& loc) const;
  // "aten::mm.default (train.py:12 in forward)"; kExit: "end of iteration".
  std::string Node(graph::NodeIndex i) const;

 private:
  std::string Where(const graph::Location& loc, int depth) const;
  const graph::TraceGraph& graph_;
  Describer describe_;
  std::unordered_map<uint64_t, graph::NodeIndex> by_hash_;
};

struct ReportInput {
  const graph::TraceGraph* graph = nullptr;
  RecorderStats stats;
  std::vector<SyncSummary> syncs;
  std::string mode;          // "trace" or "auto"
  uint64_t stable_after = 0;  // auto: iterations without change that count as stable
  int rank = 0;
  size_t max_listed = 12;    // rows per list before "... and N more"
};

// The report as text, one item per line, ending in a newline.
std::string TracingReport(const ReportInput& in, const Describer& describe);

}  // namespace terra::runtime
