#include "graph/node.h"

#include <gtest/gtest.h>

namespace terra::graph {
namespace {

NodeIdentity Fixed() {
  NodeIdentity id;
  id.op = "aten::add";
  id.overload = "Tensor";
  id.args = ArgsEncoder().Double(1.0).Take();
  id.inputs = {{6, 1, 0, {2, 3}, {3, 1}}, {6, 1, 0, {2, 3}, {3, 1}}};
  id.location.frames = {{0x1234abcdull, 42}};
  id.location.loop_context = {7};
  return id;
}

// Pins the canonical encoding: this value must be the same on every host,
// process and build. If it changes, the wire format changed: bump kWireVersion.
TEST(NodeTest, StructuralHashIsPinned) {
  EXPECT_EQ(StructuralHash(Fixed()), 0xc2674611459a8420ull) << std::hex << StructuralHash(Fixed());
}

TEST(NodeTest, Fnv1aKnownValues) {
  EXPECT_EQ(Fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(Fnv1a64("a"), 0xaf63dc4c8601ec8cull);
}

TEST(NodeTest, EveryPartOfTheIdentityChangesTheHash) {
  const uint64_t base = StructuralHash(Fixed());
  std::vector<NodeIdentity> variants(8, Fixed());
  variants[0].op = "aten::sub";
  variants[1].overload = "Scalar";
  variants[2].args = ArgsEncoder().Double(2.0).Take();
  variants[3].inputs[1].sizes = {3, 2};
  variants[4].inputs[0].device_index = 1;
  variants[5].location.frames[0].offset = 44;
  variants[6].location.loop_context.clear();
  variants[7].location.ordinal = 1;
  for (const auto& v : variants) {
    EXPECT_NE(v, Fixed());
    EXPECT_NE(StructuralHash(v), base);
  }
}

TEST(NodeTest, ArgsEncodingDistinguishesTypes) {
  EXPECT_NE(ArgsEncoder().Int(1).Take(), ArgsEncoder().Double(1.0).Take());
  EXPECT_NE(ArgsEncoder().Bool(true).Take(), ArgsEncoder().Int(1).Take());
  EXPECT_NE(ArgsEncoder().String("ab").String("").Take(),
            ArgsEncoder().String("a").String("b").Take());
  EXPECT_EQ(ArgsEncoder().IntList({1, 2}).None().Take(),
            ArgsEncoder().IntList({1, 2}).None().Take());
}

TEST(NodeTest, EncodeDecodeRoundTrip) {
  ByteWriter out;
  EncodeIdentity(Fixed(), out);
  ByteReader in(out.data());
  EXPECT_EQ(DecodeIdentity(in), Fixed());
  EXPECT_TRUE(in.AtEnd());
}

TEST(NodeTest, ShortLocationNamesFrameOrForwardNode) {
  EXPECT_EQ(ShortLocation(Fixed().location), "code 0x1234abcd+42 #0");
  Location bwd;
  bwd.backward_of = 0xabc;
  bwd.ordinal = 2;
  EXPECT_EQ(ShortLocation(bwd), "backward of 0xabc #2");
  EXPECT_EQ(QualifiedName(Fixed()), "aten::add.Tensor");
}

}  // namespace
}  // namespace terra::graph
