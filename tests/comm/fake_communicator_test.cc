#include "comm/fake_communicator.h"

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "runtime/base/check.h"
#include "tests/comm/comm_test_util.h"

namespace terra::comm {
namespace {

using std::chrono::milliseconds;
using testing::Expected;
using testing::HostBuffer;
using testing::kAllDataTypes;
using testing::kAllReduceOps;
using testing::Values;

// Runs fn(communicator) on one thread per rank.
void RunRanks(FakeWorld& world, const std::function<void(Communicator&)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < world.size(); ++r)
    threads.emplace_back([&, r] { fn(world.communicator(r)); });
  for (auto& t : threads) t.join();
}

std::string Label(DataType dtype, ReduceOp op) {
  return StrCat(DataTypeName(dtype), " ", ReduceOpName(op));
}

class FakeCommunicatorTest : public ::testing::TestWithParam<int> {};

TEST_P(FakeCommunicatorTest, AllreduceEveryOpAndDtype) {
  FakeWorld world(GetParam());
  constexpr size_t kCount = 37;
  RunRanks(world, [&](Communicator& comm) {
    for (DataType dtype : kAllDataTypes) {
      for (ReduceOp op : kAllReduceOps) {
        HostBuffer data(dtype, Values(dtype, comm.rank(), kCount));
        comm.Allreduce(data.buffer(), {.op = op})->Wait(milliseconds(10000));
        for (size_t i = 0; i < kCount; ++i) {
          ASSERT_EQ(data.Get(i), Expected(dtype, op, comm.size(), i))
              << Label(dtype, op) << " element " << i;
        }
      }
    }
  });
}

TEST_P(FakeCommunicatorTest, ReduceScatterEveryOpAndDtype) {
  FakeWorld world(GetParam());
  constexpr size_t kBlock = 5;
  RunRanks(world, [&](Communicator& comm) {
    size_t total = kBlock * static_cast<size_t>(comm.size());
    for (DataType dtype : kAllDataTypes) {
      for (ReduceOp op : kAllReduceOps) {
        HostBuffer input(dtype, Values(dtype, comm.rank(), total));
        HostBuffer output(dtype, kBlock);
        comm.ReduceScatter(input.buffer(), output.buffer(), {.op = op})->Wait(milliseconds(10000));
        for (size_t i = 0; i < kBlock; ++i) {
          size_t global = static_cast<size_t>(comm.rank()) * kBlock + i;
          ASSERT_EQ(output.Get(i), Expected(dtype, op, comm.size(), global)) << Label(dtype, op);
        }
      }
    }
  });
}

TEST_P(FakeCommunicatorTest, BroadcastFromTheLastRank) {
  FakeWorld world(GetParam());
  RunRanks(world, [&](Communicator& comm) {
    int root = comm.size() - 1;
    for (DataType dtype : kAllDataTypes) {
      HostBuffer data(dtype, Values(dtype, comm.rank(), 9));
      comm.Broadcast(data.buffer(), {.root = root})->Wait(milliseconds(10000));
      for (size_t i = 0; i < 9; ++i)
        ASSERT_EQ(data.Get(i), testing::Value(dtype, root, i)) << DataTypeName(dtype);
    }
  });
}

TEST_P(FakeCommunicatorTest, AllgatherEveryDtypeAndInPlace) {
  FakeWorld world(GetParam());
  constexpr size_t kBlock = 3;
  RunRanks(world, [&](Communicator& comm) {
    size_t n = static_cast<size_t>(comm.size());
    for (DataType dtype : kAllDataTypes) {
      HostBuffer input(dtype, Values(dtype, comm.rank(), kBlock));
      HostBuffer output(dtype, kBlock * n);
      comm.Allgather(input.buffer(), output.buffer(), {})->Wait(milliseconds(10000));
      // In place: this rank's input is its own block of the output.
      HostBuffer in_place(dtype, kBlock * n);
      for (size_t i = 0; i < kBlock; ++i)
        in_place.Set(static_cast<size_t>(comm.rank()) * kBlock + i, input.Get(i));
      comm.Allgather(in_place.slice(static_cast<size_t>(comm.rank()) * kBlock, kBlock),
                     in_place.buffer(), {})
          ->Wait(milliseconds(10000));
      for (size_t r = 0; r < n; ++r) {
        for (size_t i = 0; i < kBlock; ++i) {
          double want = testing::Value(dtype, static_cast<int>(r), i);
          ASSERT_EQ(output.Get(r * kBlock + i), want) << DataTypeName(dtype);
          ASSERT_EQ(in_place.Get(r * kBlock + i), want) << DataTypeName(dtype) << " in place";
        }
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, FakeCommunicatorTest, ::testing::Values(1, 2, 3, 4));

TEST(FakeCommunicatorTest, BarrierCompletesWhenTheLastRankJoins) {
  FakeWorld world(3);
  auto w0 = world.communicator(0).Barrier({});
  auto w1 = world.communicator(1).Barrier({});
  EXPECT_FALSE(w0->IsCompleted());
  EXPECT_FALSE(w1->IsCompleted());
  auto w2 = world.communicator(2).Barrier({});
  for (auto& w : {w0, w1, w2}) EXPECT_NO_THROW(w->Wait(milliseconds(1000)));
}

TEST(FakeCommunicatorTest, IntegerAvgIsFloorDivision) {
  FakeWorld world(2);
  HostBuffer a(DataType::kInt64, std::vector<double>{-3, 3, 7, -1});
  HostBuffer b(DataType::kInt64, std::vector<double>{0, 0, 0, 0});
  auto wa = world.communicator(0).Allreduce(a.buffer(), {.op = ReduceOp::kAvg});
  auto wb = world.communicator(1).Allreduce(b.buffer(), {.op = ReduceOp::kAvg});
  wa->Wait();
  wb->Wait();
  EXPECT_EQ(a.Get(0), -2);  // -3 // 2
  EXPECT_EQ(a.Get(1), 1);
  EXPECT_EQ(a.Get(2), 3);
  EXPECT_EQ(a.Get(3), -1);
  EXPECT_EQ(b.Get(0), -2);
}

TEST(FakeCommunicatorTest, WaitTimesOutNamingTheCollectiveWhenARankNeverJoins) {
  FakeWorld world(2);
  HostBuffer data(DataType::kFloat32, 4);
  auto work = world.communicator(0).Allreduce(data.buffer(), {});
  try {
    work->Wait(milliseconds(50));
    FAIL() << "expected TimeoutError";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("allreduce(sum) of 4 x float32 on rank 0 of 2 [fake]"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(work->IsCompleted());
  // The collective was not cancelled: rank 1 joining completes it.
  HostBuffer other(DataType::kFloat32, 4);
  world.communicator(1).Allreduce(other.buffer(), {})->Wait(milliseconds(1000));
  EXPECT_NO_THROW(work->Wait(milliseconds(1000)));
}

TEST(FakeCommunicatorTest, CollectiveTimeoutFailsTheWorkAndBreaksTheWorld) {
  FakeWorld world(2);
  HostBuffer data(DataType::kFloat64, 8);
  auto work =
      world.communicator(0).Broadcast(data.buffer(), {.root = 1, .timeout = milliseconds(50)});
  try {
    work->Wait();
    FAIL() << "expected TimeoutError";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("broadcast(root 1) of 8 x float64 on rank 0 of 2"),
              std::string::npos);
    EXPECT_NE(std::string(e.what()).find("timeout of 0.05 s"), std::string::npos) << e.what();
  }
  testing::ExpectRefusedAsBroken(*world.communicator(1).Barrier({}));
}

TEST(FakeCommunicatorTest, RanksThatDisagreeFailWithTheDifference) {
  FakeWorld world(2);
  HostBuffer a(DataType::kFloat32, 4), b(DataType::kFloat32, 8);
  auto wa = world.communicator(0).Allreduce(a.buffer(), {});
  auto wb = world.communicator(1).Allreduce(b.buffer(), {});
  for (auto& w : {wa, wb}) {
    try {
      w->Wait(milliseconds(1000));
      FAIL() << "expected Error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("count 4 on rank 0 but 8 on rank 1"), std::string::npos)
          << e.what();
    }
  }
}

TEST(FakeCommunicatorTest, InvalidArgumentsThrowAtOnce) {
  FakeWorld world(2);
  Communicator& comm = world.communicator(0);
  HostBuffer small(DataType::kFloat32, 3), big(DataType::kFloat32, 5);
  Buffer on_gpu = small.buffer();
  on_gpu.device = Device{DeviceType::kCuda, 0};
  EXPECT_THROW(comm.Allreduce(on_gpu, {}), Error);
  EXPECT_THROW(comm.Allgather(small.buffer(), big.buffer(), {}), Error);
  EXPECT_THROW(comm.ReduceScatter(big.buffer(), small.buffer(), {}), Error);
  EXPECT_THROW(comm.Broadcast(small.buffer(), {.root = 2}), Error);
  EXPECT_THROW(comm.Allreduce(Buffer{nullptr, 4, DataType::kInt32, {}}, {}), Error);
  HostBuffer ints(DataType::kInt32, 6);
  EXPECT_THROW(comm.Allgather(small.buffer(), ints.buffer(), {}), Error);
  // Nothing was submitted: the next collectives still match.
  HostBuffer x(DataType::kInt32, std::vector<double>{1}),
      y(DataType::kInt32, std::vector<double>{2});
  auto wx = world.communicator(0).Allreduce(x.buffer(), {});
  world.communicator(1).Allreduce(y.buffer(), {})->Wait(milliseconds(1000));
  wx->Wait(milliseconds(1000));
  EXPECT_EQ(x.Get(0), 3);
}

TEST(FakeCommunicatorTest, ManyAsynchronousCollectivesCompleteInOrder) {
  FakeWorld world(3);
  constexpr int kOps = 200;
  RunRanks(world, [&](Communicator& comm) {
    std::vector<HostBuffer> buffers;
    std::vector<std::shared_ptr<Work>> works;
    for (int k = 0; k < kOps; ++k)
      buffers.emplace_back(DataType::kInt64, std::vector<double>{double(comm.rank() + k)});
    for (int k = 0; k < kOps; ++k) works.push_back(comm.Allreduce(buffers[k].buffer(), {}));
    works.back()->Wait(milliseconds(10000));
    for (int k = 0; k < kOps; ++k) {
      ASSERT_TRUE(works[k]->IsCompleted()) << k;
      ASSERT_EQ(buffers[k].Get(0), 3.0 * k + 3) << k;  // (0+k) + (1+k) + (2+k)
    }
  });
}

TEST(FakeCommunicatorTest, DestroyingTheWorldAbortsPendingWork) {
  std::shared_ptr<Work> work;
  {
    FakeWorld world(2);
    work = world.communicator(0).Barrier({});
  }
  EXPECT_THROW(work->Wait(milliseconds(1000)), Error);
}

}  // namespace
}  // namespace terra::comm
