#include "graph/dot.h"

#include <gtest/gtest.h>

#include "graph_test_util.h"

namespace terra::graph {
namespace {

using testing::MakeTrace;

TEST(DotTest, LabelsBranchesSyncsAndSegments) {
  TraceGraph g;
  Trace t = MakeTrace({"a", "b", "c"});
  t.AddSync(ValueRef::Output(2), {});
  g.AddTrace(t);
  g.AddTrace(MakeTrace({"a", "b", "x"}));
  std::string dot = ToDot(g);
  EXPECT_EQ(dot.rfind("digraph TraceGraph {", 0), 0u);
  EXPECT_NE(dot.find("aten::a.Tensor\\ncode 0xf00d+2 #0"), std::string::npos) << dot;
  EXPECT_NE(dot.find("aten::x.Tensor"), std::string::npos);
  EXPECT_NE(dot.find("n1 [label=\"aten::b.Tensor\\ncode 0xf00d+2 #0\", style=filled, "
                     "fillcolor=orange]"),
            std::string::npos)
      << dot;
  EXPECT_NE(dot.find("\\nsync\", peripheries=2"), std::string::npos);
  EXPECT_NE(dot.find("subgraph cluster_s2"), std::string::npos);
  EXPECT_NE(dot.find("entry -> n0 [label=\"2\"]"), std::string::npos);
  EXPECT_NE(dot.find("n2 -> exit [label=\"1\"]"), std::string::npos);
  EXPECT_EQ(dot.back(), '\n');
}

TEST(DotTest, EscapesQuotes) {
  TraceGraph g;
  Trace t;
  auto id = testing::Op("a");
  id.op = "my\"op";
  t.Add(id, {ValueRef::External(ValueKind::kConstant, 0)}, 1);
  g.AddTrace(t);
  EXPECT_NE(ToDot(g).find("my\\\"op.Tensor"), std::string::npos);
}

}  // namespace
}  // namespace terra::graph
