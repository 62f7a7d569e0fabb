#include "graph/node.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

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
// The three values pinned here were checked against an independent Python
// re-implementation of the encoding and of Hash64 (wire version 3).
TEST(NodeTest, StructuralHashIsPinned) {
  EXPECT_EQ(StructuralHash(Fixed()), 0x9158c140451e3bc1ull) << std::hex << StructuralHash(Fixed());
}

TEST(NodeTest, Hash64KnownValues) {
  EXPECT_EQ(Hash64(""), 0xf8bb92c91b3f5cc0ull) << std::hex << Hash64("");
  EXPECT_EQ(Hash64("a"), 0xeb9a3d4fb2ec2c36ull) << std::hex << Hash64("a");
}

// Trailing zero bytes and word boundaries count: the length is mixed in.
TEST(NodeTest, Hash64SeesLengthAndEveryByte) {
  std::vector<uint64_t> seen;
  for (size_t n = 0; n <= 17; ++n) seen.push_back(Hash64(std::string(n, '\0')));
  for (size_t n = 0; n < 17; ++n) {
    std::string bytes(n + 1, 'x');
    bytes[n] = 'y';  // each position, the last byte of a word included
    seen.push_back(Hash64(bytes));
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::adjacent_find(seen.begin(), seen.end()), seen.end());
}

// The contract the validator relies on: a HashWriter fed a ByteWriter's calls
// ends with Hash64 of the bytes the ByteWriter wrote, whatever the mix of
// widths (every alignment of a word).
TEST(NodeTest, HashWriterStreamsWhatByteWriterWrites) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    ByteWriter bytes;
    HashWriter hash;
    const int calls = static_cast<int>(rng() % 40);
    for (int c = 0; c < calls; ++c) {
      const uint64_t v = rng();
      switch (rng() % 6) {
        case 0: bytes.U8(static_cast<uint8_t>(v)); hash.U8(static_cast<uint8_t>(v)); break;
        case 1: bytes.U16(static_cast<uint16_t>(v)); hash.U16(static_cast<uint16_t>(v)); break;
        case 2: bytes.U32(static_cast<uint32_t>(v)); hash.U32(static_cast<uint32_t>(v)); break;
        case 3: bytes.U64(v); hash.U64(v); break;
        case 4: {
          const std::string s(v % 20, static_cast<char>(v >> 8));
          bytes.Bytes(s);
          hash.Bytes(s);
          break;
        }
        default: {
          const std::string s(v % 13, static_cast<char>(v >> 16));
          bytes.Raw(s);
          hash.Raw(s);
          break;
        }
      }
    }
    EXPECT_EQ(hash.state(), Hash64(bytes.data())) << "round " << round;
  }
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
