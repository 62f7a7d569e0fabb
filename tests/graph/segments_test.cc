#include "graph/segments.h"

#include <gtest/gtest.h>

#include "graph_test_util.h"

namespace terra::graph {
namespace {

using testing::MakeTrace;
using testing::Op;
using testing::Push;

// Segments as lists of op names ("aten::" dropped), for readable expectations.
std::vector<std::vector<std::string>> Names(const TraceGraph& g) {
  std::vector<std::vector<std::string>> out;
  for (const Segment& s : Segments(g)) {
    out.emplace_back();
    for (NodeIndex i : s.nodes) out.back().push_back(g.node(i).identity.op.substr(6));
  }
  return out;
}

using NameSegments = std::vector<std::vector<std::string>>;

TEST(SegmentsTest, StraightLineIsOneSegment) {
  TraceGraph g;
  g.AddTrace(MakeTrace({"a", "b", "c"}));
  EXPECT_EQ(Names(g), (NameSegments{{"a", "b", "c"}}));
  auto segs = Segments(g);
  EXPECT_FALSE(segs[0].ends_at_branch);
  EXPECT_FALSE(segs[0].ends_at_sync);
}

TEST(SegmentsTest, SplitAtBranchPointAndJoin) {
  TraceGraph g;
  g.AddTrace(MakeTrace({"a", "b", "c", "d", "e"}));
  g.AddTrace(MakeTrace({"a", "b", "x", "d", "e"}));
  EXPECT_EQ(Names(g), (NameSegments{{"a", "b"}, {"c"}, {"d", "e"}, {"x"}}));
  auto segs = Segments(g);
  EXPECT_TRUE(segs[0].ends_at_branch);
  EXPECT_FALSE(segs[1].ends_at_branch);
}

TEST(SegmentsTest, SplitAtSyncPoint) {
  TraceGraph g;
  Trace t = MakeTrace({"a", "b"});
  t.AddSync(ValueRef::Output(1), {});
  Push(t, "c");
  Push(t, "d");
  g.AddTrace(t);
  EXPECT_EQ(Names(g), (NameSegments{{"a", "b"}, {"c", "d"}}));
  auto segs = Segments(g);
  EXPECT_TRUE(segs[0].ends_at_sync);
  EXPECT_FALSE(segs[1].ends_at_sync);
}

TEST(SegmentsTest, LoopBodyIsItsOwnSegment) {
  TraceGraph g;
  g.AddTrace(MakeTrace({"pre", "body1", "body2", "body1", "body2", "post"}));
  EXPECT_EQ(Names(g), (NameSegments{{"pre"}, {"body1", "body2"}, {"post"}}));
  auto segs = Segments(g);
  EXPECT_TRUE(segs[1].ends_at_branch);
  auto of = SegmentOf(g, segs);
  EXPECT_EQ(of[segs[1].nodes[1]], 1u);
}

TEST(SegmentsTest, EveryNodeInExactlyOneSegment) {
  TraceGraph g;
  g.AddTrace(MakeTrace({"a", "b", "c", "b", "c", "d", "e"}));
  g.AddTrace(MakeTrace({"a", "x", "c", "d"}));
  std::vector<int> seen(g.NodeCount(), 0);
  for (const Segment& s : Segments(g)) {
    for (NodeIndex i : s.nodes) ++seen[i];
  }
  for (int n : seen) EXPECT_EQ(n, 1);
}

TEST(SegmentsTest, EmptyGraphHasNoSegments) { EXPECT_TRUE(Segments(TraceGraph()).empty()); }

}  // namespace
}  // namespace terra::graph
