// The collectives' shapes, bus-bandwidth factors and data, without a
// communicator (harness_test.cc runs them on a FakeWorld).
#include "comm/bench/collective.h"

#include <gtest/gtest.h>

#include <cmath>

namespace terra::comm::bench {
namespace {

constexpr DataType kAllDataTypes[] = {DataType::kFloat32,  DataType::kFloat64, DataType::kFloat16,
                                      DataType::kBFloat16, DataType::kInt32,   DataType::kInt64,
                                      DataType::kUInt8,    DataType::kInt8};

TEST(BenchCollectiveTest, BusFactorsAreNcclTests) {
  for (int n : {1, 2, 3, 4, 8, 64}) {
    EXPECT_DOUBLE_EQ(MakeAllreduce()->BusFactor(n), 2.0 * (n - 1) / n) << n;
    EXPECT_DOUBLE_EQ(MakeAllgather()->BusFactor(n), double(n - 1) / n) << n;
    EXPECT_DOUBLE_EQ(MakeReduceScatter()->BusFactor(n), double(n - 1) / n) << n;
    EXPECT_DOUBLE_EQ(MakeBroadcast()->BusFactor(n), 1.0) << n;
  }
}

TEST(BenchCollectiveTest, SizeIsTheLargerBuffer) {
  // 1000 float32 elements requested at 3 ranks.
  Shape allreduce = MakeAllreduce()->ShapeFor(1000, DataType::kFloat32, 3);
  EXPECT_EQ(allreduce.bytes, 4000u);
  EXPECT_EQ(allreduce.input_count, 1000u);
  EXPECT_EQ(allreduce.output_count, 0u);  // in place

  Shape allgather = MakeAllgather()->ShapeFor(1000, DataType::kFloat32, 3);
  EXPECT_EQ(allgather.input_count, 333u);
  EXPECT_EQ(allgather.output_count, 999u);
  EXPECT_EQ(allgather.bytes, 3996u);

  Shape reduce_scatter = MakeReduceScatter()->ShapeFor(1000, DataType::kFloat32, 3);
  EXPECT_EQ(reduce_scatter.input_count, 999u);
  EXPECT_EQ(reduce_scatter.output_count, 333u);
  EXPECT_EQ(reduce_scatter.bytes, 3996u);

  Shape broadcast = MakeBroadcast()->ShapeFor(1000, DataType::kFloat64, 3);
  EXPECT_EQ(broadcast.bytes, 8000u);

  EXPECT_EQ(MakeAllgather()->ShapeFor(2, DataType::kFloat32, 3).input_count, 0u);  // too small
}

TEST(BenchCollectiveTest, KindsAndParameters) {
  for (CollectiveKind kind : {CollectiveKind::kAllreduce, CollectiveKind::kAllgather,
                              CollectiveKind::kReduceScatter, CollectiveKind::kBroadcast}) {
    auto collective = MakeCollective(kind);
    ASSERT_NE(collective, nullptr);
    EXPECT_EQ(collective->kind(), kind);
    bool reduces = kind == CollectiveKind::kAllreduce || kind == CollectiveKind::kReduceScatter;
    EXPECT_EQ(collective->reduces(), reduces);
    EXPECT_EQ(collective->has_root(), kind == CollectiveKind::kBroadcast);
  }
}

// Every input, every sum and the poison are exactly representable, and the
// poison differs from every input and every reduction.
TEST(BenchPatternTest, ValuesAreExactInEveryType) {
  for (DataType dtype : kAllDataTypes) {
    for (int world : {1, 2, 3, 7, 8, 64, 300}) {
      DataPattern pattern(dtype, world);
      EXPECT_EQ(RoundTo(dtype, pattern.poison()), pattern.poison());
      for (size_t i = 0; i < 500; ++i) {
        double sum = 0;
        for (int r = 0; r < world; ++r) {
          double v = pattern.Input(r, i);
          ASSERT_EQ(RoundTo(dtype, v), v) << DataTypeName(dtype);
          ASSERT_LT(v, pattern.poison());
          sum += v;
        }
        ASSERT_EQ(pattern.Reduced(ReduceOp::kSum, i), sum);
        ASSERT_EQ(RoundTo(dtype, sum), sum) << DataTypeName(dtype) << " world " << world;
      }
    }
  }
}

TEST(BenchPatternTest, InputsDifferAcrossRanksAndIndices) {
  DataPattern pattern(DataType::kFloat32, 4);
  EXPECT_NE(pattern.Input(0, 5), pattern.Input(1, 5));
  EXPECT_NE(pattern.Input(0, 5), pattern.Input(0, 6));
  EXPECT_NE(pattern.Reduced(ReduceOp::kMax, 5), pattern.Reduced(ReduceOp::kMin, 5));
}

TEST(BenchPatternTest, AvgRoundsAsTheCommunicatorContract) {
  DataPattern pattern(DataType::kInt32, 3);
  for (size_t i = 0; i < 50; ++i) {  // floor division
    EXPECT_EQ(pattern.Reduced(ReduceOp::kAvg, i),
              std::floor(pattern.Reduced(ReduceOp::kSum, i) / 3));
  }
  DataPattern floats(DataType::kFloat32, 3);
  for (size_t i = 0; i < 50; ++i) {  // float32 division
    EXPECT_EQ(floats.Reduced(ReduceOp::kAvg, i),
              static_cast<double>(static_cast<float>(floats.Reduced(ReduceOp::kSum, i)) / 3.0f));
  }
}

TEST(BenchPatternTest, CountMismatchesCountsEachWrongElement) {
  std::vector<float> data = {1, 2, 3, 4};
  auto expected = [](size_t i) { return double(i + 1); };
  EXPECT_EQ(CountMismatches(data.data(), DataType::kFloat32, 4, expected), 0u);
  data[1] = 7;
  data[3] = NAN;
  EXPECT_EQ(CountMismatches(data.data(), DataType::kFloat32, 4, expected), 2u);
}

}  // namespace
}  // namespace terra::comm::bench
