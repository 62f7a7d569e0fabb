#include "graph/serialize.h"

#include <algorithm>

#include "runtime/base/check.h"

namespace terra::graph {

namespace {

inline constexpr size_t kMaxNodes = 1 << 24;
inline constexpr size_t kMaxSourcesPerSlot = 1 << 16;
inline constexpr size_t kMaxEdgesPerNode = 1 << 20;
// Smallest encodings, for the count-versus-bytes-left check.
inline constexpr size_t kMinNodeBytes = 3 * 4 + 4 + 4 + 4 + 8 + 4 + 8 + 4 + 8 + 1 + 4 + 8 + 1 + 4 + 4;
inline constexpr size_t kSourceBytes = 9;
inline constexpr size_t kEdgeBytes = 12;

void WriteEdges(const std::vector<Edge>& edges, ByteWriter& out) {
  out.U32(static_cast<uint32_t>(edges.size()));
  for (const Edge& e : edges) {
    out.U32(e.to);
    out.U64(e.count);
  }
}

std::vector<Edge> ReadEdges(ByteReader& in, size_t node_count) {
  std::vector<Edge> edges(in.Count("successor count", kEdgeBytes, kMaxEdgesPerNode));
  for (Edge& e : edges) {
    e.to = in.U32("edge target");
    if (e.to != kExit && e.to >= node_count) {
      in.Fail("edge target", StrCat("node ", e.to, " out of range (", node_count, " nodes)"));
    }
    e.count = in.U64("edge count");
  }
  std::vector<NodeIndex> targets;
  targets.reserve(edges.size());
  for (const Edge& e : edges) targets.push_back(e.to);
  std::sort(targets.begin(), targets.end());
  auto dup = std::adjacent_find(targets.begin(), targets.end());
  if (dup != targets.end()) in.Fail("edge target", StrCat("duplicate edge to ", *dup));
  return edges;
}

}  // namespace

std::string Serialize(const TraceGraph& graph) {
  ByteWriter out;
  out.Raw(std::string_view(kWireMagic, 4));
  out.U16(kWireVersion);
  out.U16(0);
  out.U64(graph.TracesAdded());
  out.U64(graph.StableFor());
  out.U32(static_cast<uint32_t>(graph.NodeCount()));
  for (const GraphNode& g : graph.nodes()) {
    EncodeIdentity(g.identity, out);
    out.U64(g.hash);
    out.U32(g.num_outputs);
    out.U64(g.visits);
    out.U8(g.sync_after ? 1 : 0);
    EncodeMetas(g.outputs, out);
    out.U64(g.outputs_hash);
    out.U8(g.outputs_vary ? 1 : 0);
    out.U32(static_cast<uint32_t>(g.input_sources.size()));
    for (const auto& sources : g.input_sources) {
      out.U32(static_cast<uint32_t>(sources.size()));
      for (const GraphValueSource& s : sources) {
        out.U8(static_cast<uint8_t>(s.kind));
        out.U32(s.index);
        out.U32(s.output);
      }
    }
    WriteEdges(g.successors, out);
  }
  WriteEdges(graph.Successors(kEntry), out);
  return out.Take();
}

TraceGraph Deserialize(std::string_view bytes) {
  ByteReader in(bytes);
  if (in.Raw("magic", 4) != std::string_view(kWireMagic, 4)) {
    ByteReader(bytes).Fail("magic", "not a TraceGraph (expected \"TRGR\")");
  }
  uint16_t version = in.U16("version");
  if (version != kWireVersion) {
    in.Fail("version", StrCat("version ", version, " unsupported, this build reads ", kWireVersion,
                              "; run the same Terra build on every rank"));
  }
  if (in.U16("flags") != 0) in.Fail("flags", "unknown flags set");
  TraceGraph graph;
  graph.traces_added_ = in.U64("traces_added");
  graph.stable_for_ = in.U64("stable_for");
  if (graph.stable_for_ > graph.traces_added_) {
    in.Fail("stable_for", "larger than traces_added");
  }
  uint32_t node_count = in.Count("node count", kMinNodeBytes, kMaxNodes);
  graph.nodes_.reserve(node_count);
  for (uint32_t n = 0; n < node_count; ++n) {
    GraphNode g;
    g.identity = DecodeIdentity(in);
    g.hash = in.U64("node hash");
    if (g.hash != StructuralHash(g.identity)) {
      in.Fail("node hash",
              StrCat("node ", n, " (", QualifiedName(g.identity), ") does not match its identity"));
    }
    if (graph.Find(g.identity, g.hash)) {
      in.Fail("node identity", StrCat("node ", n, " duplicates an earlier node"));
    }
    g.num_outputs = in.U32("num_outputs");
    g.visits = in.U64("visits");
    uint8_t sync = in.U8("sync_after");
    if (sync > 1) in.Fail("sync_after", StrCat("expected 0 or 1, got ", sync));
    g.sync_after = sync == 1;
    g.outputs = DecodeMetas(in, "output count");
    if (!g.outputs.empty() && g.outputs.size() != g.num_outputs) {
      in.Fail("output count", StrCat(g.outputs.size(), " output metadata for ", g.num_outputs, " outputs"));
    }
    g.outputs_hash = in.U64("outputs hash");
    if (!g.outputs.empty() && g.outputs_hash != MetasHash(g.outputs)) {
      in.Fail("outputs hash", StrCat("node ", n, ": does not match its output metadata"));
    }
    uint8_t vary = in.U8("outputs_vary");
    if (vary > 1) in.Fail("outputs_vary", StrCat("expected 0 or 1, got ", vary));
    g.outputs_vary = vary == 1;
    uint32_t slots = in.Count("input slot count", 4, kMaxTensorInputs);
    if (slots != g.identity.inputs.size()) {
      in.Fail("input slot count",
              StrCat(slots, " slots but ", g.identity.inputs.size(), " tensor inputs"));
    }
    g.input_sources.resize(slots);
    for (auto& sources : g.input_sources) {
      sources.resize(in.Count("source count", kSourceBytes, kMaxSourcesPerSlot));
      for (GraphValueSource& s : sources) {
        uint8_t kind = in.U8("source kind");
        if (kind > kMaxValueKind) in.Fail("source kind", StrCat("unknown kind ", int{kind}));
        s.kind = static_cast<ValueKind>(kind);
        s.index = in.U32("source index");
        s.output = in.U32("source output");
        if (s.kind == ValueKind::kNodeOutput && s.index >= node_count) {
          in.Fail("source index", StrCat("node ", s.index, " out of range"));
        }
      }
    }
    g.successors = ReadEdges(in, node_count);
    graph.nodes_.push_back(std::move(g));
    graph.by_hash_.emplace(graph.nodes_.back().hash, n);
  }
  graph.entry_successors_ = ReadEdges(in, node_count);
  if (!in.AtEnd()) in.Fail("end", StrCat(in.Remaining(), " trailing bytes"));
  // Sources may point forward (a loop-carried value), so check outputs last.
  for (const GraphNode& g : graph.nodes_) {
    for (const auto& sources : g.input_sources) {
      for (const GraphValueSource& s : sources) {
        if (s.kind == ValueKind::kNodeOutput && s.output >= graph.nodes_[s.index].num_outputs) {
          in.Fail("source output",
                  StrCat("output ", s.output, " of node ", s.index, " out of range"));
        }
      }
    }
  }
  return graph;
}

}  // namespace terra::graph
