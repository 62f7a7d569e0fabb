#include "graph/serialize.h"

#include <gtest/gtest.h>

#include <random>

#include "graph/dot.h"
#include "graph/segments.h"
#include "graph_test_util.h"
#include "runtime/base/check.h"

namespace terra::graph {
namespace {

using testing::MakeTrace;

// Branches, a loop, a sync point, external inputs of every kind.
TraceGraph Sample() {
  TraceGraph g;
  Trace t = MakeTrace({"pre", "body", "tail", "body", "tail", "post"});
  t.AddSync(ValueRef::Output(5), {});
  const std::vector<TensorMeta> small = {TensorMeta{6, 0, -1, {2, 3}, {3, 1}}};
  t.SetOutputs(0, small, MetasHash(small));
  g.AddTrace(t);
  Trace u;
  u.Add(testing::Op("pre"), {ValueRef::External(ValueKind::kFreshAllocation, 1)}, 1);
  const std::vector<TensorMeta> large = {TensorMeta{6, 0, -1, {4, 3}, {3, 1}}};
  u.SetOutputs(0, large, MetasHash(large));  // "pre" now has outputs that vary
  NodeIdentity two_in = testing::Op("cat");
  two_in.inputs.push_back(two_in.inputs[0]);
  two_in.args = ArgsEncoder().Int(0).IntList({1, 2}).Take();
  two_in.location.backward_of = 0x1234;
  u.Add(two_in, {ValueRef::Output(0), ValueRef::External(ValueKind::kConstant, 2)}, 2);
  u.Add(testing::Op("post"), {ValueRef::Output(1, 1)}, 1);
  g.AddTrace(u);
  g.AddTrace(u);
  return g;
}

// Throws terra::Error whose message names an offset and contains `what`.
void ExpectMalformed(std::string_view bytes, const std::string& what) {
  try {
    Deserialize(bytes);
    FAIL() << "accepted malformed bytes, expected: " << what;
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("at offset "), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  }
}

void PutU32(std::string& s, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) s[at + i] = static_cast<char>(v >> (8 * i));
}

TEST(SerializeTest, RoundTripPreservesStructureHashesAndCounts) {
  TraceGraph g = Sample();
  std::string bytes = Serialize(g);
  TraceGraph back = Deserialize(bytes);
  EXPECT_TRUE(back == g);
  ASSERT_EQ(back.NodeCount(), g.NodeCount());
  for (NodeIndex i = 0; i < g.NodeCount(); ++i) {
    EXPECT_EQ(back.node(i).hash, g.node(i).hash);
    EXPECT_EQ(back.node(i).hash, StructuralHash(back.node(i).identity));
  }
  EXPECT_EQ(back.BranchPoints(), g.BranchPoints());
  EXPECT_EQ(Segments(back), Segments(g));
  EXPECT_EQ(back.StableFor(), 1u);
  EXPECT_EQ(Serialize(back), bytes);
  // The rebuilt index works: merging continues where the sender stopped.
  EXPECT_FALSE(back.AddTrace(MakeTrace({"pre", "body", "tail", "post"})));
  EXPECT_EQ(back.NodeCount(), g.NodeCount());
}

TEST(SerializeTest, OutputMetadataRoundTripsAndIsChecked) {
  const TraceGraph g = Sample();
  const GraphNode& pre = g.node(0);
  ASSERT_EQ(pre.outputs.size(), 1u);
  EXPECT_EQ(pre.outputs[0].sizes, (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(pre.outputs_vary);
  const TraceGraph back = Deserialize(Serialize(g));
  EXPECT_EQ(back.node(0).outputs, pre.outputs);
  EXPECT_TRUE(back.node(0).outputs_vary);
  // Corrupt one output size: the outputs hash no longer matches.
  std::string bytes = Serialize(g);
  ByteWriter size_two;
  size_two.I64(2);
  ByteWriter size_nine;
  size_nine.I64(9);
  const size_t at = bytes.find(size_two.data(), bytes.find(pre.identity.op));
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 8, size_nine.data());
  ExpectMalformed(bytes, "hash");
}

TEST(SerializeTest, EmptyGraphRoundTrips) {
  TraceGraph g;
  EXPECT_TRUE(Deserialize(Serialize(g)) == g);
}

TEST(SerializeTest, RejectsEmptyBadMagicAndBadVersion) {
  ExpectMalformed("", "magic");
  std::string bytes = Serialize(Sample());
  std::string bad = bytes;
  bad[0] = 'X';
  ExpectMalformed(bad, "not a TraceGraph");
  bad = bytes;
  bad[4] = 99;
  ExpectMalformed(bad, "version 99 unsupported");
  bad = bytes;
  bad[6] = 1;
  ExpectMalformed(bad, "flags");
}

TEST(SerializeTest, RejectsEveryTruncation) {
  std::string bytes = Serialize(Sample());
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_THROW(Deserialize(std::string_view(bytes).substr(0, n)), Error) << n;
  }
  ExpectMalformed(bytes + "x", "trailing bytes");
}

TEST(SerializeTest, RejectsOversizedLengths) {
  const std::string bytes = Serialize(Sample());
  std::string bad = bytes;
  PutU32(bad, 24, 0xFFFFFFFFu);  // node count
  ExpectMalformed(bad, "node count");
  bad = bytes;
  PutU32(bad, 24, 1000);  // under the limit, but cannot fit in the bytes left
  ExpectMalformed(bad, "cannot fit");
  bad = bytes;
  PutU32(bad, 28, 0x7FFFFFFFu);  // the first node's operator name length
  ExpectMalformed(bad, "operator name");
}

TEST(SerializeTest, RejectsHashMismatch) {
  std::string bad = Serialize(Sample());
  bad[32 + 4] ^= 1;  // a letter of the first operator name ("aten::pre")
  ExpectMalformed(bad, "does not match its identity");
}

// Fuzz: random byte flips either decode to a graph the passes can use, or
// throw terra::Error; nothing else (no crash, no other exception).
TEST(SerializeTest, RandomFlipsNeverCrash) {
  const std::string bytes = Serialize(Sample());
  std::mt19937 rng(1234);
  int rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bad = bytes;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      bad[rng() % bad.size()] ^= static_cast<char>(1 + rng() % 255);
    }
    if (iter % 5 == 0) bad.resize(rng() % bad.size());
    try {
      TraceGraph g = Deserialize(bad);
      Segments(g);
      ToDot(g);
      EXPECT_TRUE(Deserialize(Serialize(g)) == g);
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 1000);
}

}  // namespace
}  // namespace terra::graph
