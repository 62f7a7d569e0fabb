// The tracing report from hand-built traces: no tensors involved.
#include "runtime/tracing_report.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace terra::runtime {
namespace {

using graph::NodeIdentity;
using graph::Trace;
using graph::ValueKind;
using graph::ValueRef;

NodeIdentity Op(const std::string& op, uint32_t line) {
  NodeIdentity id;
  id.op = op;
  id.inputs = {graph::TensorMeta{6, 0, -1, {4}, {1}}};
  id.location.frames = {graph::Frame{7, line}};
  return id;
}

Trace Iteration(bool other) {
  Trace t;
  t.Add(Op("aten::mul", 1), {ValueRef::External(ValueKind::kProgramInput, 0)}, 1);
  t.Add(Op(other ? "aten::neg" : "aten::exp", other ? 2 : 3), {ValueRef::Output(0)}, 1);
  t.AddSync(ValueRef::Output(1), Op("x", 4).location);
  return t;
}

std::string Describe(const std::vector<graph::Frame>& frames) {
  return "train.py:" + std::to_string(frames.back().offset);
}

TEST(TracingReportTest, NamesBranchesAndSyncsByTheirSourceLines) {
  graph::TraceGraph g;
  g.AddTrace(Iteration(false));
  g.AddTrace(Iteration(true));
  g.AddTrace(Iteration(false));
  ReportInput in;
  in.graph = &g;
  in.stats.iterations = 3;
  in.stats.ops = 6;
  in.stats.ops_per_iteration = {2, 2, 2};
  in.syncs = {SyncSummary{Op("x", 4).location, "print", 3}};
  in.mode = "trace";
  const std::string text = TracingReport(in, Describe);
  EXPECT_NE(text.find("iterations traced: 3"), std::string::npos) << text;
  EXPECT_NE(text.find("TraceGraph: 3 nodes"), std::string::npos) << text;
  EXPECT_NE(text.find("1 branch points"), std::string::npos) << text;
  EXPECT_NE(text.find("aten::mul [4] (train.py:1) -> 2 ways:"), std::string::npos) << text;
  EXPECT_NE(text.find("2x  aten::exp [4] (train.py:3)"), std::string::npos) << text;
  EXPECT_NE(text.find("1x  aten::neg [4] (train.py:2)"), std::string::npos) << text;
  EXPECT_NE(text.find("3x  train.py:4  print"), std::string::npos) << text;
}

TEST(TracingReportTest, BackwardOpsAreNamedThroughTheirForwardNode) {
  graph::TraceGraph g;
  Trace t;
  t.Add(Op("aten::mul", 1), {ValueRef::External(ValueKind::kProgramInput, 0)}, 1);
  NodeIdentity back = Op("aten::mul", 0);
  back.location.frames.clear();
  back.location.backward_of = graph::StructuralHash(Op("aten::mul", 1));
  t.Add(back, {ValueRef::Output(0)}, 1);
  g.AddTrace(t);
  LocationNamer namer(g, Describe);
  EXPECT_EQ(namer.Where(back.location), "backward of aten::mul at train.py:1");
  graph::Location orphan;
  orphan.backward_of = 12345;
  EXPECT_EQ(namer.Where(orphan), "autograd (no forward op)");
}

TEST(TracingReportTest, SaysWhenNoIterationWasTraced) {
  graph::TraceGraph g;
  ReportInput in;
  in.graph = &g;
  in.mode = "auto";
  in.stats.ops_in_current = 5;
  const std::string text = TracingReport(in, Describe);
  EXPECT_NE(text.find("no iteration was traced"), std::string::npos) << text;
  EXPECT_NE(text.find("terra.iteration()"), std::string::npos) << text;
}

TEST(TracingReportTest, SummaryCountsSegmentsAndVariants) {
  graph::TraceGraph g;
  g.AddTrace(Iteration(false));
  g.AddTrace(Iteration(true));
  const GraphSummary s = Summarize(g);
  EXPECT_EQ(s.nodes, 3u);
  EXPECT_EQ(s.branch_points, 1u);
  EXPECT_EQ(s.segments, 3u);
  EXPECT_EQ(s.sync_nodes, 2u);
  EXPECT_EQ(s.max_variants, 1u);
}

}  // namespace
}  // namespace terra::runtime
