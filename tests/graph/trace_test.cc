#include "graph/trace.h"

#include <gtest/gtest.h>

#include "graph_test_util.h"
#include "runtime/base/check.h"

namespace terra::graph {
namespace {

using testing::Op;

TEST(TraceTest, RecordsNodesSyncsAndHashes) {
  Trace t;
  EXPECT_EQ(t.Add(Op("mul"), {ValueRef::External(ValueKind::kProgramInput, 3)}, 1), 0u);
  EXPECT_EQ(t.Add(Op("sum"), {ValueRef::Output(0)}, 1), 1u);
  t.AddSync(ValueRef::Output(1), {});
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t.nodes()[1].hash, StructuralHash(Op("sum")));
  ASSERT_EQ(t.syncs().size(), 1u);
  EXPECT_EQ(t.syncs()[0].position, 2u);
}

TEST(TraceTest, RejectsBadValueReferences) {
  Trace t;
  EXPECT_THROW(t.Add(Op("mul"), {ValueRef::Output(0)}, 1), Error);  // no earlier node
  t.Add(Op("mul"), {ValueRef::External(ValueKind::kConstant, 0)}, 1);
  EXPECT_THROW(t.Add(Op("sum"), {ValueRef::Output(0, 1)}, 1), Error);  // one output only
  EXPECT_THROW(t.Add(Op("sum"), {}, 1), Error);                        // metadata for one input
  EXPECT_THROW(t.AddSync(ValueRef::Output(5), {}), Error);
  EXPECT_EQ(t.size(), 1u);
}

}  // namespace
}  // namespace terra::graph
