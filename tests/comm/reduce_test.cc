#include "comm/reduce.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace terra::comm {
namespace {

TEST(TypesTest, HalfConversionsRoundToNearestEven) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);               // rounds up to infinity
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 2048.0f), 0x3c00);  // a tie: to even
  EXPECT_EQ(FloatToHalf(1.0f + 3.0f / 2048.0f), 0x3c02);  // a tie: to even
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::numeric_limits<float>::quiet_NaN()))));
  for (uint32_t bits = 0; bits < 0x7c00; ++bits) {
    ASSERT_EQ(FloatToHalf(HalfToFloat(static_cast<uint16_t>(bits))), bits) << bits;
  }
}

TEST(TypesTest, BFloat16ConversionsRoundToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_EQ(BFloat16ToFloat(0xc040), -3.0f);
  EXPECT_EQ(FloatToBFloat16(1.0f + 1.0f / 256.0f), 0x3f80);  // a tie: to even
  EXPECT_EQ(FloatToBFloat16(1.0f + 3.0f / 256.0f), 0x3f82);
  EXPECT_TRUE(
      std::isnan(BFloat16ToFloat(FloatToBFloat16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(ReduceTest, IntegerSumWrapsAndAvgFloors) {
  std::vector<int8_t> acc = {127, -7, 7, -128};
  std::vector<int8_t> operand = {1, 0, 0, 0};
  ReduceInto(acc.data(), operand.data(), acc.size(), DataType::kInt8, ReduceOp::kSum);
  EXPECT_EQ(acc[0], -128);
  DivideBy(acc.data(), acc.size(), DataType::kInt8, 2);
  EXPECT_EQ(acc[0], -64);
  EXPECT_EQ(acc[1], -4);  // -7 // 2
  EXPECT_EQ(acc[2], 3);
  std::vector<uint8_t> bytes = {200};
  DivideBy(bytes.data(), 1, DataType::kUInt8, 300);  // a divisor wider than the type
  EXPECT_EQ(bytes[0], 0);
}

TEST(ReduceTest, MaxAndMinPropagateNaN) {
  float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> acc = {1.0f, nan}, operand = {nan, 2.0f};
  ReduceInto(acc.data(), operand.data(), 2, DataType::kFloat32, ReduceOp::kMax);
  EXPECT_TRUE(std::isnan(acc[0]));
  EXPECT_TRUE(std::isnan(acc[1]));
}

TEST(ReduceTest, HalfSumRoundsEachStep) {
  std::vector<uint16_t> acc = {FloatToHalf(2048.0f)}, operand = {FloatToHalf(1.0f)};
  ReduceInto(acc.data(), operand.data(), 1, DataType::kFloat16, ReduceOp::kSum);
  EXPECT_EQ(HalfToFloat(acc[0]), 2048.0f);  // 2049 is not a float16: ties to even
  DivideBy(acc.data(), 1, DataType::kFloat16, 3);
  EXPECT_EQ(acc[0], FloatToHalf(2048.0f / 3.0f));
}

}  // namespace
}  // namespace terra::comm
