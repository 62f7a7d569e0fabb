#include "comm/bench/options.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace terra::comm::bench {
namespace {

// The message of the UsageError that parsing `args` throws.
std::string UsageErrorOf(const std::vector<std::string>& args) {
  try {
    ParseOptions(args);
  } catch (const UsageError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected UsageError";
  return "";
}

TEST(BenchOptionsTest, ParsesSizesWithBinarySuffixes) {
  EXPECT_EQ(ParseSize("-b", "8"), 8u);
  EXPECT_EQ(ParseSize("-b", "1K"), 1024u);
  EXPECT_EQ(ParseSize("-b", "1k"), 1024u);
  EXPECT_EQ(ParseSize("-b", "64M"), size_t{64} << 20);
  EXPECT_EQ(ParseSize("-b", "2G"), size_t{2} << 30);
}

TEST(BenchOptionsTest, RefusesMalformedSizesNamingTheFlag) {
  for (const char* text : {"", "K", "1KB", "1.5M", "-1", "0", "1T", "12345678901234"}) {
    try {
      ParseSize("-e", text);
      ADD_FAILURE() << "accepted '" << text << "'";
    } catch (const UsageError& e) {
      EXPECT_EQ(std::string(e.what()).rfind("-e: ", 0), 0u) << e.what();
    }
  }
}

TEST(BenchOptionsTest, DefaultsMatchTheUsageText) {
  BenchOptions options = ParseOptions({});
  EXPECT_EQ(options.collectives, std::vector<CollectiveKind>{CollectiveKind::kAllreduce});
  EXPECT_EQ(options.min_bytes, 1024u);
  EXPECT_EQ(options.max_bytes, size_t{64} << 20);
  EXPECT_EQ(options.factor, 4u);
  EXPECT_EQ(options.warmup, 5);
  EXPECT_EQ(options.iterations, 20);
  EXPECT_FALSE(options.check);
  EXPECT_TRUE(options.raw_mpi);
  EXPECT_EQ(options.device, DeviceType::kCpu);
}

TEST(BenchOptionsTest, ParsesEveryOption) {
  BenchOptions options = ParseOptions({"--op",
                                       "all",
                                       "-b",
                                       "8",
                                       "-e",
                                       "64K",
                                       "-f",
                                       "8",
                                       "-w",
                                       "1",
                                       "-n",
                                       "3",
                                       "--check",
                                       "--dtype",
                                       "bfloat16",
                                       "--reduce",
                                       "max",
                                       "--root",
                                       "1",
                                       "--device",
                                       "cuda",
                                       "--json",
                                       "out.json",
                                       "--no-raw-mpi",
                                       "--inject-error"});
  EXPECT_EQ(options.collectives.size(), 4u);
  EXPECT_EQ(options.collectives[2], CollectiveKind::kReduceScatter);
  EXPECT_EQ(options.min_bytes, 8u);
  EXPECT_EQ(options.max_bytes, 65536u);
  EXPECT_EQ(options.factor, 8u);
  EXPECT_EQ(options.warmup, 1);
  EXPECT_EQ(options.iterations, 3);
  EXPECT_TRUE(options.check);
  EXPECT_EQ(options.dtype, DataType::kBFloat16);
  EXPECT_EQ(options.op, ReduceOp::kMax);
  EXPECT_EQ(options.root, 1);
  EXPECT_EQ(options.device, DeviceType::kCuda);
  EXPECT_EQ(options.json_path, "out.json");
  EXPECT_FALSE(options.raw_mpi);
  EXPECT_TRUE(options.inject_error);
}

TEST(BenchOptionsTest, LongOptionsTakeEqualsValues) {
  BenchOptions options = ParseOptions({"--op=reduce_scatter", "--min-bytes=2K", "--iters=7"});
  EXPECT_EQ(options.collectives, std::vector<CollectiveKind>{CollectiveKind::kReduceScatter});
  EXPECT_EQ(options.min_bytes, 2048u);
  EXPECT_EQ(options.iterations, 7);
}

TEST(BenchOptionsTest, MistakesNameTheArgumentAndWhatToDo) {
  const std::pair<std::vector<std::string>, std::string> cases[] = {
      {{"--op", "gather"}, "--op: unknown collective 'gather'; give allreduce"},
      {{"-b", "1Q"}, "-b: '1Q' is not a size"},
      {{"-b", "2K", "-e", "1K"}, "give -b <= -e"},
      {{"-f", "1"}, "-f: '1' is not an integer >= 2"},
      {{"-n", "0"}, "-n: '0' is not an integer >= 1"},
      {{"-w", "x"}, "-w: 'x' is not an integer >= 0"},
      {{"--dtype", "float8"}, "--dtype: unknown type 'float8'"},
      {{"--reduce", "prod"}, "--reduce: unknown reduction 'prod'"},
      {{"--device", "tpu"}, "--device: unknown device 'tpu'"},
      {{"--root", "-1"}, "--root: '-1' is not an integer >= 0"},
      {{"-e"}, "-e: needs a value"},
      {{"--check=yes"}, "--check: takes no value"},
      {{"--json", ""}, "--json: needs a file path"},
      {{"--frobnicate"}, "--frobnicate: unknown option"},
  };
  for (const auto& [args, expected] : cases) {
    std::string message = UsageErrorOf(args);
    EXPECT_NE(message.find(expected), std::string::npos) << message;
    EXPECT_NE(message.find("--help"), std::string::npos) << message;
  }
}

TEST(BenchOptionsTest, SizeStepsMultiplyUpToTheMaximum) {
  BenchOptions options;
  options.min_bytes = 1024;
  options.max_bytes = size_t{64} << 20;
  options.factor = 4;
  std::vector<size_t> sizes = SizeSteps(options);
  ASSERT_EQ(sizes.size(), 9u);  // 1K 4K 16K 64K 256K 1M 4M 16M 64M
  EXPECT_EQ(sizes.front(), 1024u);
  EXPECT_EQ(sizes.back(), size_t{64} << 20);

  options.min_bytes = 8;
  options.max_bytes = 65536;
  options.factor = 8;
  EXPECT_EQ(SizeSteps(options), (std::vector<size_t>{8, 64, 512, 4096, 32768}));

  options.min_bytes = options.max_bytes = 100;
  EXPECT_EQ(SizeSteps(options), std::vector<size_t>{100});

  options.min_bytes = size_t{1} << 62;  // the next step would overflow
  options.max_bytes = SIZE_MAX;
  EXPECT_EQ(SizeSteps(options).size(), 1u);
}

}  // namespace
}  // namespace terra::comm::bench
