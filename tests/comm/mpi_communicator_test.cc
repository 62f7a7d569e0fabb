// MpiCommunicator at 2 and 4 ranks. CTest runs this binary under terrarun
// (`terrarun -np 2 mpi_communicator_test`); run directly, every test skips.
// Every rank runs the same tests in the same order, so their collectives
// match; a failing assertion on one rank makes the others time out.
#include "comm/mpi_communicator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "comm/control/client.h"
#include "comm/control/environment.h"
#include "runtime/base/check.h"
#include "tests/comm/comm_test_util.h"

namespace terra::comm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using testing::Expected;
using testing::HostBuffer;
using testing::kAllDataTypes;
using testing::kAllReduceOps;
using testing::Values;

constexpr milliseconds kWait{60000};

MpiCommunicator* g_comm = nullptr;
control::ControlClient* g_client = nullptr;
std::string g_skip_reason = "not under terrarun: run `terrarun -np 2 mpi_communicator_test`";

class MpiCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (g_comm == nullptr) GTEST_SKIP() << g_skip_reason;
  }
  MpiCommunicator& comm() { return *g_comm; }
  int rank() { return g_comm->rank(); }
  int size() { return g_comm->size(); }
};

TEST_F(MpiCommunicatorTest, AllreduceEveryOpAndDtype) {
  for (DataType dtype : kAllDataTypes) {
    for (ReduceOp op : kAllReduceOps) {
      HostBuffer data(dtype, Values(dtype, rank(), 101));
      comm().Allreduce(data.buffer(), {.op = op})->Wait(kWait);
      for (size_t i = 0; i < data.count(); ++i) {
        ASSERT_EQ(data.Get(i), Expected(dtype, op, size(), i))
            << DataTypeName(dtype) << " " << ReduceOpName(op) << " element " << i;
      }
    }
  }
}

TEST_F(MpiCommunicatorTest, IntegerAvgIsFloorDivision) {
  HostBuffer data(DataType::kInt64,
                  std::vector<double>{rank() == 0 ? -3.0 : 0.0, rank() == 0 ? 3.0 : 0.0});
  comm().Allreduce(data.buffer(), {.op = ReduceOp::kAvg})->Wait(kWait);
  EXPECT_EQ(data.Get(0), std::floor(-3.0 / size()));
  EXPECT_EQ(data.Get(1), std::floor(3.0 / size()));
}

TEST_F(MpiCommunicatorTest, BroadcastFromRoot1) {
  for (DataType dtype : kAllDataTypes) {
    HostBuffer data(dtype, Values(dtype, rank(), 33));
    comm().Broadcast(data.buffer(), {.root = 1})->Wait(kWait);
    for (size_t i = 0; i < 33; ++i)
      ASSERT_EQ(data.Get(i), testing::Value(dtype, 1, i)) << DataTypeName(dtype);
  }
}

TEST_F(MpiCommunicatorTest, AllgatherAndInPlace) {
  constexpr size_t kBlock = 7;
  size_t n = static_cast<size_t>(size()), me = static_cast<size_t>(rank());
  for (DataType dtype : {DataType::kFloat32, DataType::kInt64, DataType::kBFloat16}) {
    HostBuffer input(dtype, Values(dtype, rank(), kBlock));
    HostBuffer output(dtype, kBlock * n), in_place(dtype, kBlock * n);
    for (size_t i = 0; i < kBlock; ++i) in_place.Set(me * kBlock + i, input.Get(i));
    auto w1 = comm().Allgather(input.buffer(), output.buffer(), {});
    auto w2 = comm().Allgather(in_place.slice(me * kBlock, kBlock), in_place.buffer(), {});
    w1->Wait(kWait);
    w2->Wait(kWait);
    for (size_t r = 0; r < n; ++r) {
      for (size_t i = 0; i < kBlock; ++i) {
        ASSERT_EQ(output.Get(r * kBlock + i), testing::Value(dtype, static_cast<int>(r), i));
        ASSERT_EQ(in_place.Get(r * kBlock + i), testing::Value(dtype, static_cast<int>(r), i));
      }
    }
  }
}

TEST_F(MpiCommunicatorTest, ReduceScatterEveryOp) {
  constexpr size_t kBlock = 6;
  for (DataType dtype :
       {DataType::kFloat32, DataType::kFloat64, DataType::kInt64, DataType::kFloat16}) {
    for (ReduceOp op : kAllReduceOps) {
      HostBuffer input(dtype, Values(dtype, rank(), kBlock * static_cast<size_t>(size())));
      HostBuffer output(dtype, kBlock);
      comm().ReduceScatter(input.buffer(), output.buffer(), {.op = op})->Wait(kWait);
      for (size_t i = 0; i < kBlock; ++i) {
        ASSERT_EQ(output.Get(i),
                  Expected(dtype, op, size(), static_cast<size_t>(rank()) * kBlock + i))
            << DataTypeName(dtype) << " " << ReduceOpName(op);
      }
    }
  }
}

TEST_F(MpiCommunicatorTest, BarrierWaitsForTheLastRank) {
  // Rank 0 joins late and marks in the store that it is joining: a rank that
  // leaves the barrier must see the mark.
  static int round = 0;
  std::string key = StrCat("test/barrier/rank0-joined/", round++);
  if (rank() == 0) {
    std::this_thread::sleep_for(milliseconds(300));
    g_client->Set(key, "1");
  }
  comm().Barrier({})->Wait(kWait);
  EXPECT_TRUE(g_client->Check({key})) << "the barrier completed before rank 0 joined it";
}

TEST_F(MpiCommunicatorTest, WaitTimesOutNamingTheCollectiveThenSucceeds) {
  if (rank() == 0) {
    auto work = comm().Barrier({});
    try {
      work->Wait(milliseconds(20));
      FAIL() << "expected TimeoutError";
    } catch (const TimeoutError& e) {
      EXPECT_NE(
          std::string(e.what()).find("barrier on rank 0 of " + std::to_string(size()) + " [mpi]"),
          std::string::npos)
          << e.what();
    }
    work->Wait(kWait);
  } else {
    std::this_thread::sleep_for(milliseconds(500));
    comm().Barrier({})->Wait(kWait);
  }
}

TEST_F(MpiCommunicatorTest, LargeBuffer16MFloats) {
  constexpr size_t kCount = size_t{16} << 20;
  std::vector<float> data(kCount, static_cast<float>(rank() + 1));
  comm().Allreduce(Buffer{data.data(), kCount, DataType::kFloat32, {}}, {})->Wait(kWait);
  float want = static_cast<float>(size() * (size() + 1) / 2);
  size_t wrong = 0;
  for (float v : data) wrong += v != want;
  EXPECT_EQ(wrong, 0u);
}

TEST_F(MpiCommunicatorTest, ManyBackToBackCollectivesCompleteInOrder) {
  constexpr int kOps = 400;
  std::vector<std::vector<int64_t>> buffers(kOps);
  std::vector<std::shared_ptr<Work>> works;
  for (int k = 0; k < kOps; ++k) {
    buffers[k].assign(static_cast<size_t>(1 + (k % 7) * 1000), rank() + k);
    Buffer b{buffers[k].data(), buffers[k].size(), DataType::kInt64, {}};
    if (k % 5 == 4) {
      works.push_back(comm().Broadcast(b, {.root = k % size()}));
    } else {
      works.push_back(comm().Allreduce(b, {.op = k % 2 ? ReduceOp::kMax : ReduceOp::kSum}));
    }
  }
  // Completions arrive in order: never a completed Work after a pending one.
  // Checked from the last to the first, so a completion between two reads
  // cannot look like disorder.
  while (!works.back()->IsCompleted()) {
    bool later_done = false;
    for (int k = kOps - 1; k >= 0; --k) {
      bool done = works[k]->IsCompleted();
      ASSERT_TRUE(done || !later_done) << "a collective after op " << k << " completed before it";
      later_done = later_done || done;
    }
    std::this_thread::sleep_for(milliseconds(1));
  }
  for (int k = 0; k < kOps; ++k) {
    works[k]->Wait(kWait);
    int64_t want = k % 5 == 4 ? (k % size()) + k
                   : k % 2    ? (size() - 1) + k
                              : size() * k + size() * (size() - 1) / 2;
    ASSERT_EQ(buffers[k].front(), want) << "op " << k;
    ASSERT_EQ(buffers[k].back(), want) << "op " << k;
  }
}

TEST_F(MpiCommunicatorTest, InvalidArgumentsThrowAtOnce) {
  std::vector<float> data(4);
  EXPECT_THROW(comm().Allreduce(
                   Buffer{data.data(), 4, DataType::kFloat32, Device{DeviceType::kCuda, 0}}, {}),
               Error);
  EXPECT_THROW(comm().Broadcast(Buffer{data.data(), 4, DataType::kFloat32, {}}, {.root = size()}),
               Error);
  // Nothing was submitted: the ranks still agree.
  comm().Barrier({})->Wait(kWait);
}

// Breaks the communicator, so CTest runs it alone (comm.mpi_communicator.timeout).
TEST_F(MpiCommunicatorTest, BreaksCollectiveTimeoutFailsTheWorkAndBreaksTheCommunicator) {
  std::vector<double> data(8, 1.0);
  if (rank() == 0) {  // the other ranks never join
    auto work = comm().Allreduce(Buffer{data.data(), 8, DataType::kFloat64, {}},
                                 {.timeout = milliseconds(500)});
    try {
      work->Wait();
      FAIL() << "expected TimeoutError";
    } catch (const TimeoutError& e) {
      std::string message = e.what();
      EXPECT_NE(message.find("allreduce(sum) of 8 x float64 on rank 0 of"), std::string::npos)
          << message;
      EXPECT_NE(message.find("timeout of 0.5 s"), std::string::npos) << message;
      EXPECT_NE(message.find("(host "), std::string::npos) << message;
    }
    testing::ExpectRefusedAsBroken(*comm().Barrier({}));
  }
}

// Prints what one allreduce costs through MpiCommunicator (submit + Wait)
// against MPI_Allreduce called in a loop on the progress thread, on the same
// MPI communicator; three alternating rounds each, the best reported.
// Run: terrarun -np 2 mpi_communicator_test --gtest_also_run_disabled_tests
// --gtest_filter='*Benchmark*'
TEST_F(MpiCommunicatorTest, DISABLED_BenchmarkAllreduceLatency) {
  for (size_t bytes : {size_t{1} << 20, size_t{16} << 20}) {
    size_t count = bytes / sizeof(float);
    int iterations = bytes <= (size_t{1} << 20) ? 100 : 20;
    std::vector<float> data(count, 0.0f);  // zeros: the sums stay finite
    Buffer b{data.data(), count, DataType::kFloat32, {}};
    double ours = 1e300, plain = 1e300;
    for (int round = 0; round < 3; ++round) {
      for (int i = 0; i < 3; ++i) comm().Allreduce(b, {})->Wait(kWait);
      comm().Barrier({})->Wait(kWait);
      auto start = Clock::now();
      for (int i = 0; i < iterations; ++i) comm().Allreduce(b, {})->Wait(kWait);
      ours =
          std::min(ours, std::chrono::duration<double, std::micro>(Clock::now() - start).count() /
                             iterations);
      comm()
          .RunOnProgressThread(
              "plain MPI_Allreduce loop",
              [&](MPI_Comm c) {
                MPI_Barrier(c);
                auto t0 = Clock::now();
                for (int i = 0; i < iterations; ++i)
                  MPI_Allreduce(MPI_IN_PLACE, data.data(), int(count), MPI_FLOAT, MPI_SUM, c);
                plain = std::min(
                    plain, std::chrono::duration<double, std::micro>(Clock::now() - t0).count() /
                               iterations);
              })
          ->Wait(kWait);
    }
    if (rank() == 0) {
      std::cout << "allreduce float32 " << (bytes >> 20) << " MiB x " << size()
                << " ranks: MpiCommunicator " << ours << " us, plain MPI_Allreduce " << plain
                << " us (best of 3 x " << iterations << ")\n";
    }
  }
}

// The test's own control-plane connection and heartbeat.
struct RankEnvironment {
  std::unique_ptr<control::ControlClient> client;
  std::unique_ptr<control::Heartbeat> heartbeat;
  int rank = -1;
  int world_size = 0;
};

// False when not under terrarun; throws terra::Error for a malformed variable.
bool JoinJob(RankEnvironment* env) {
  std::optional<control::JobEnvironment> job = control::JobFromEnvironment();
  if (!job) return false;
  env->rank = job->rank;
  env->world_size = job->world_size;
  env->heartbeat = std::make_unique<control::Heartbeat>(job->client, job->heartbeat_interval);
  env->client = std::make_unique<control::ControlClient>(job->client);
  return true;
}

}  // namespace
}  // namespace terra::comm

int main(int argc, char** argv) {
  using namespace terra::comm;
  ::testing::InitGoogleTest(&argc, argv);
  RankEnvironment env;
  std::unique_ptr<MpiCommunicator> comm;
  if (JoinJob(&env)) {
    if (env.world_size < 2) {
      g_skip_reason = "needs at least 2 ranks";
    } else if (std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr &&
               std::getenv("OMPI_MCA_pmix_server_uri") == nullptr) {
      g_skip_reason = "terrarun found no ompi-server on PATH (install openmpi-bin)";
    } else {
      comm = MpiCommunicator::Create(env.client.get(), env.rank, env.world_size);
      g_comm = comm.get();
      g_client = env.client.get();
    }
  }
  int result = RUN_ALL_TESTS();
  g_comm = nullptr;
  comm.reset();  // finalizes MPI with the other ranks
  return result;
}
