// RunCollective end to end on a FakeWorld (threads of this process): fill,
// check, timing loop and the cross-rank reductions of times and counts.
#include "comm/bench/harness.h"

#include <gtest/gtest.h>

#include <exception>
#include <sstream>
#include <thread>
#include <vector>

#include "comm/fake_communicator.h"

namespace terra::comm::bench {
namespace {

// Backend owns its Communicator; the FakeWorld owns the fake ones.
class Forwarding final : public Communicator {
 public:
  explicit Forwarding(Communicator& target) : target_(target) {}
  int rank() const override { return target_.rank(); }
  int size() const override { return target_.size(); }
  const char* backend() const override { return target_.backend(); }
  std::shared_ptr<Work> Allreduce(Buffer b, const AllreduceOptions& o) override {
    return target_.Allreduce(b, o);
  }
  std::shared_ptr<Work> Broadcast(Buffer b, const BroadcastOptions& o) override {
    return target_.Broadcast(b, o);
  }
  std::shared_ptr<Work> Allgather(Buffer in, Buffer out, const AllgatherOptions& o) override {
    return target_.Allgather(in, out, o);
  }
  std::shared_ptr<Work> ReduceScatter(Buffer in, Buffer out,
                                      const ReduceScatterOptions& o) override {
    return target_.ReduceScatter(in, out, o);
  }
  std::shared_ptr<Work> Barrier(const BarrierOptions& o) override { return target_.Barrier(o); }

 private:
  Communicator& target_;
};

struct Result {
  std::vector<std::vector<Row>> rows;  // per rank
  std::string log;                     // rank 0's table
};

Result RunOnFakeWorld(int world_size, const BenchOptions& options, CollectiveKind kind) {
  FakeWorld world(world_size);
  Result result;
  result.rows.resize(world_size);
  std::vector<std::exception_ptr> errors(world_size);
  std::ostringstream log;
  std::vector<std::thread> threads;
  threads.reserve(world_size);
  for (int rank = 0; rank < world_size; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        Backend backend{CreateHostMemory(), std::make_unique<Forwarding>(world.communicator(rank)),
                        nullptr};
        result.rows[rank] =
            RunCollective(backend, options, *MakeCollective(kind), rank == 0 ? &log : nullptr);
      } catch (...) {
        errors[rank] = std::current_exception();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  result.log = log.str();
  return result;
}

BenchOptions SmallRun() {
  BenchOptions options;
  options.min_bytes = 8;
  options.max_bytes = 4096;
  options.factor = 8;
  options.warmup = 1;
  options.iterations = 2;
  options.check = true;
  return options;
}

const CollectiveKind kAllKinds[] = {CollectiveKind::kAllreduce, CollectiveKind::kAllgather,
                                    CollectiveKind::kReduceScatter, CollectiveKind::kBroadcast};

TEST(BenchHarnessTest, EveryCollectiveTypeAndOpChecksClean) {
  for (int world : {1, 2, 3}) {
    for (CollectiveKind kind : kAllKinds) {
      for (DataType dtype : {DataType::kFloat32, DataType::kFloat16, DataType::kBFloat16,
                             DataType::kInt8, DataType::kUInt8, DataType::kInt64}) {
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
          BenchOptions options = SmallRun();
          options.dtype = dtype;
          options.op = op;
          options.root = world - 1;
          Result result = RunOnFakeWorld(world, options, kind);
          ASSERT_FALSE(result.rows[0].empty());
          for (const Row& row : result.rows[0]) {
            EXPECT_EQ(row.wrong, 0)
                << CollectiveKindName(kind) << " " << DataTypeName(dtype) << " " << ReduceOpName(op)
                << " world " << world << " " << row.bytes << " B";
          }
        }
      }
    }
  }
}

TEST(BenchHarnessTest, InjectedErrorIsCountedOncePerSize) {
  for (CollectiveKind kind : kAllKinds) {
    BenchOptions options = SmallRun();
    options.inject_error = true;
    Result result = RunOnFakeWorld(2, options, kind);
    ASSERT_EQ(result.rows[0].size(), 4u) << CollectiveKindName(kind);  // 8, 64, 512, 4096
    for (const Row& row : result.rows[0]) EXPECT_EQ(row.wrong, 1) << CollectiveKindName(kind);
  }
}

TEST(BenchHarnessTest, RowsAgreeAcrossRanksAndBandwidthsFollowTheTime) {
  BenchOptions options = SmallRun();
  Result result = RunOnFakeWorld(2, options, CollectiveKind::kAllreduce);
  ASSERT_EQ(result.rows[0].size(), result.rows[1].size());
  for (size_t i = 0; i < result.rows[0].size(); ++i) {
    const Row& row = result.rows[0][i];
    EXPECT_EQ(row.time_us, result.rows[1][i].time_us);  // the max over ranks
    EXPECT_GT(row.time_us, 0);
    EXPECT_DOUBLE_EQ(row.algbw, row.bytes / (row.time_us * 1e3));
    EXPECT_DOUBLE_EQ(row.busbw, row.algbw * 2 * (2 - 1) / 2);
    EXPECT_EQ(row.op, ReduceOp::kSum);
    EXPECT_FALSE(row.root.has_value());
    EXPECT_FALSE(row.raw_time_us.has_value());  // no MPI backend
  }
  EXPECT_NE(result.log.find("# allreduce"), std::string::npos) << result.log;
  EXPECT_NE(result.log.find("#wrong"), std::string::npos) << result.log;
}

TEST(BenchHarnessTest, WithoutCheckNothingIsCounted) {
  BenchOptions options = SmallRun();
  options.check = false;
  Result result = RunOnFakeWorld(2, options, CollectiveKind::kAllgather);
  for (const Row& row : result.rows[0]) EXPECT_FALSE(row.wrong.has_value());
  EXPECT_NE(result.log.find("N/A"), std::string::npos);
}

TEST(BenchHarnessTest, SizesBelowOneElementPerRankAreSkipped) {
  BenchOptions options = SmallRun();
  options.min_bytes = 4;
  options.max_bytes = 16;
  options.factor = 2;  // 4, 8, 16 B of float32 at 3 ranks: only 16 B holds 3 elements
  Result result = RunOnFakeWorld(3, options, CollectiveKind::kReduceScatter);
  ASSERT_EQ(result.rows[0].size(), 1u);
  EXPECT_EQ(result.rows[0][0].bytes, 12u);
  EXPECT_NE(result.log.find("8 B skipped"), std::string::npos) << result.log;
}

}  // namespace
}  // namespace terra::comm::bench
