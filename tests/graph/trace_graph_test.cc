#include "graph/trace_graph.h"

#include <gtest/gtest.h>

#include "graph_test_util.h"
#include "runtime/base/check.h"

namespace terra::graph {
namespace {

using testing::MakeTrace;
using testing::Op;

NodeIndex IndexOf(const TraceGraph& g, const std::string& name) {
  auto id = Op(name);
  auto found = g.Find(id, StructuralHash(id));
  EXPECT_TRUE(found.has_value()) << name;
  return found.value_or(kExit);
}

std::vector<NodeIndex> Targets(const TraceGraph& g, NodeIndex from) {
  std::vector<NodeIndex> out;
  for (const Edge& e : g.Successors(from)) out.push_back(e.to);
  return out;
}

TEST(TraceGraphTest, IdenticalTracesMergeWithoutGrowth) {
  TraceGraph g;
  Trace t = MakeTrace({"mul", "add", "sum"});
  EXPECT_TRUE(g.AddTrace(t));
  EXPECT_EQ(g.NodeCount(), 3u);
  EXPECT_EQ(g.EdgeCount(), 4u);  // entry->mul->add->sum->exit
  EXPECT_EQ(g.StableFor(), 0u);
  EXPECT_FALSE(g.IsStable(1));
  for (int i = 1; i <= 3; ++i) {
    EXPECT_FALSE(g.AddTrace(t));
    EXPECT_EQ(g.StableFor(), static_cast<uint64_t>(i));
  }
  EXPECT_TRUE(g.IsStable(3));
  EXPECT_FALSE(g.IsStable(4));
  EXPECT_EQ(g.NodeCount(), 3u);
  EXPECT_EQ(g.EdgeCount(), 4u);
  EXPECT_TRUE(g.BranchPoints().empty());
  EXPECT_EQ(g.node(IndexOf(g, "add")).visits, 4u);
  EXPECT_EQ(g.Successors(kEntry)[0].count, 4u);
  EXPECT_EQ(g.TracesAdded(), 4u);
}

TEST(TraceGraphTest, DivergingTracesMakeOneBranchPointAndReconverge) {
  TraceGraph g;
  g.AddTrace(MakeTrace({"a", "b", "c", "d"}));
  EXPECT_TRUE(g.AddTrace(MakeTrace({"a", "b", "x", "d"})));
  EXPECT_EQ(g.NodeCount(), 5u);
  NodeIndex b = IndexOf(g, "b");
  EXPECT_EQ(g.BranchPoints(), std::vector<NodeIndex>{b});
  EXPECT_EQ(Targets(g, b), (std::vector<NodeIndex>{IndexOf(g, "c"), IndexOf(g, "x")}));
  EXPECT_EQ(Targets(g, IndexOf(g, "c")), std::vector<NodeIndex>{IndexOf(g, "d")});
  EXPECT_EQ(Targets(g, IndexOf(g, "x")), std::vector<NodeIndex>{IndexOf(g, "d")});
  EXPECT_EQ(g.StableFor(), 0u);
  EXPECT_FALSE(g.AddTrace(MakeTrace({"a", "b", "c", "d"})));
  EXPECT_FALSE(g.AddTrace(MakeTrace({"a", "b", "x", "d"})));
  EXPECT_EQ(g.StableFor(), 2u);
}

TEST(TraceGraphTest, DivergenceAtTheFirstNodeBranchesAtEntry) {
  TraceGraph g;
  g.AddTrace(MakeTrace({"a", "b"}));
  g.AddTrace(MakeTrace({"x", "b"}));
  EXPECT_EQ(g.BranchPoints(), std::vector<NodeIndex>{kEntry});
}

Trace LoopTrace(int trips) {
  std::vector<std::string> names = {"pre"};
  for (int i = 0; i < trips; ++i) {
    names.push_back("body1");
    names.push_back("body2");
  }
  names.push_back("post");
  return MakeTrace(names);
}

TEST(TraceGraphTest, LoopSizeIsIndependentOfTripCount) {
  TraceGraph g;
  EXPECT_TRUE(g.AddTrace(LoopTrace(2)));
  const size_t nodes = g.NodeCount(), edges = g.EdgeCount();
  EXPECT_EQ(nodes, 4u);
  EXPECT_EQ(edges, 6u);  // entry->pre->body1->body2->post->exit, body2->body1
  for (int trips : {3, 10, 100, 2}) {
    EXPECT_FALSE(g.AddTrace(LoopTrace(trips))) << trips;
    EXPECT_EQ(g.NodeCount(), nodes);
    EXPECT_EQ(g.EdgeCount(), edges);
  }
  NodeIndex body1 = IndexOf(g, "body1"), body2 = IndexOf(g, "body2");
  EXPECT_EQ(Targets(g, body2), (std::vector<NodeIndex>{body1, IndexOf(g, "post")}));
  EXPECT_EQ(g.BranchPoints(), std::vector<NodeIndex>{body2});
  EXPECT_EQ(g.node(body1).visits, 2u + 3 + 10 + 100 + 2);
  // The loop-carried input: from pre on the first trip, from body2 after.
  const auto& sources = g.node(body1).input_sources.at(0);
  EXPECT_EQ(sources, (std::vector<GraphValueSource>{ValueRef::Output(IndexOf(g, "pre")),
                                                    ValueRef::Output(body2)}));
}

TEST(TraceGraphTest, SingleTripThenManyAddsTheBackEdgeOnce) {
  TraceGraph g;
  g.AddTrace(LoopTrace(1));
  EXPECT_TRUE(g.AddTrace(LoopTrace(5)));
  EXPECT_FALSE(g.AddTrace(LoopTrace(9)));
  EXPECT_FALSE(g.AddTrace(LoopTrace(1)));
}

TEST(TraceGraphTest, NewSyncPointOrValueSourceIsAChange) {
  TraceGraph g;
  Trace t = MakeTrace({"a", "b"});
  g.AddTrace(t);
  Trace with_sync = MakeTrace({"a"});
  with_sync.AddSync(ValueRef::Output(0), {});
  testing::Push(with_sync, "b");
  EXPECT_TRUE(g.AddTrace(with_sync));
  EXPECT_TRUE(g.node(IndexOf(g, "a")).sync_after);
  EXPECT_FALSE(g.AddTrace(with_sync));

  Trace other_input;
  other_input.Add(Op("a"), {ValueRef::External(ValueKind::kFreshAllocation, 0)}, 1);
  testing::Push(other_input, "b");
  EXPECT_TRUE(g.AddTrace(other_input));
  EXPECT_EQ(g.node(IndexOf(g, "a")).input_sources[0].size(), 2u);
}

TEST(TraceGraphTest, ShapeChangeIsANewNodeVariant) {
  TraceGraph g;
  g.AddTrace(MakeTrace({"a"}));
  Trace t;
  t.Add(Op("a", {8}), {ValueRef::External(ValueKind::kProgramInput, 0)}, 1);
  EXPECT_TRUE(g.AddTrace(t));
  EXPECT_EQ(g.NodeCount(), 2u);
  EXPECT_EQ(g.BranchPoints(), std::vector<NodeIndex>{kEntry});
}

TEST(TraceGraphTest, OutputCountMismatchIsRejectedWithoutChange) {
  TraceGraph g;
  g.AddTrace(MakeTrace({"a", "b"}));
  Trace bad;
  bad.Add(Op("x"), {ValueRef::External(ValueKind::kConstant, 0)}, 1);
  bad.Add(Op("a"), {ValueRef::Output(0)}, 2);
  TraceGraph before = g;
  EXPECT_THROW(g.AddTrace(bad), Error);
  EXPECT_TRUE(g == before);
}

TEST(TraceGraphTest, EmptyTraceIsAnEntryToExitEdge) {
  TraceGraph g;
  EXPECT_TRUE(g.AddTrace(Trace()));
  EXPECT_EQ(Targets(g, kEntry), std::vector<NodeIndex>{kExit});
  EXPECT_FALSE(g.AddTrace(Trace()));
}

}  // namespace
}  // namespace terra::graph

namespace terra::graph {
namespace {

TEST(TraceGraphTest, OutputMetadataThatChangesMarksTheNode) {
  auto with_output = [](int64_t rows) {
    Trace t = testing::MakeTrace({"narrow", "sum"});
    const std::vector<TensorMeta> out = {TensorMeta{6, 0, -1, {rows}, {1}}};
    t.SetOutputs(0, out, MetasHash(out));
    return t;
  };
  TraceGraph g;
  EXPECT_TRUE(g.AddTrace(with_output(3)));
  EXPECT_FALSE(g.AddTrace(with_output(3)));
  EXPECT_FALSE(g.node(0).outputs_vary);
  EXPECT_EQ(g.node(0).outputs[0].sizes, std::vector<int64_t>{3});
  EXPECT_TRUE(g.AddTrace(with_output(5)));  // a structural change: stability restarts
  EXPECT_TRUE(g.node(0).outputs_vary);
  EXPECT_EQ(g.node(0).outputs[0].sizes, std::vector<int64_t>{3});  // the first recorded
  EXPECT_FALSE(g.AddTrace(with_output(7)));  // already marked
  EXPECT_EQ(g.StableFor(), 1u);
}

TEST(TraceGraphTest, ElidedNodesMergeByHashAndMustExist) {
  TraceGraph g;
  g.AddTrace(testing::MakeTrace({"a", "b"}));
  Trace known;
  known.AddKnown(g.node(0).hash, {ValueRef::External(ValueKind::kProgramInput, 0)}, 1);
  known.AddKnown(g.node(1).hash, {ValueRef::Output(0)}, 1);
  EXPECT_FALSE(g.AddTrace(known));
  EXPECT_EQ(g.node(1).visits, 2u);
  Trace unknown;
  unknown.AddKnown(0x1234, {ValueRef::External(ValueKind::kProgramInput, 0)}, 1);
  EXPECT_THROW(g.AddTrace(unknown), Error);
  EXPECT_EQ(g.TracesAdded(), 2u);  // the rejected trace changed nothing
}

}  // namespace
}  // namespace terra::graph
