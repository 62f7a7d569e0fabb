// NcclCommunicator on real GPUs, formed through an in-process ControlServer:
// every collective, op and dtype in a world of one (and of two, one thread
// and GPU per rank, where two GPUs are visible); the integer floor-division
// kernel; the order against the caller's stream and WaitOnStream; CUDA graph
// capture and replay; a timeout that aborts and breaks the communicator.
// Every test skips (GTEST_SKIP) where the CUDA devices it needs are missing.
#include "comm/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include "comm/control/client.h"
#include "comm/control/server.h"
#include "comm/nccl_kernels.h"
#include "runtime/base/check.h"
#include "tests/comm/comm_test_util.h"
#include "tests/comm/control_test_util.h"

namespace terra::comm {
namespace {

using std::chrono::milliseconds;
using testing::Expected;
using testing::HostBuffer;
using testing::kAllDataTypes;
using testing::kAllReduceOps;
using testing::Value;
using testing::Values;

constexpr milliseconds kWait{20000};

void CudaOk(cudaError_t rc, const char* call) {
  if (rc != cudaSuccess) throw std::runtime_error(StrCat(call, ": ", cudaGetErrorString(rc)));
}
#define CUDA_OK(call) CudaOk((call), #call)

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

// Device memory behind a Buffer, copied to and from HostBuffers on a stream.
class DeviceBuffer {
 public:
  DeviceBuffer(DataType dtype, size_t count, int device)
      : dtype_(dtype), count_(count), device_(device) {
    CUDA_OK(cudaMalloc(&data_, bytes() + 1));
    CUDA_OK(cudaMemset(data_, 0, bytes() + 1));
  }
  ~DeviceBuffer() { (void)cudaFree(data_); }

  size_t bytes() const { return count_ * DataTypeSize(dtype_); }
  Buffer buffer() { return slice(0, count_); }
  Buffer slice(size_t offset, size_t count) {
    return Buffer{static_cast<char*>(data_) + offset * DataTypeSize(dtype_), count, dtype_,
                  Device{DeviceType::kCuda, device_}};
  }
  void Upload(HostBuffer& host, cudaStream_t stream) {
    CUDA_OK(cudaMemcpyAsync(data_, host.buffer().data, bytes(), cudaMemcpyHostToDevice, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
  }
  HostBuffer Download(cudaStream_t stream) {
    HostBuffer host(dtype_, count_);
    CUDA_OK(cudaMemcpyAsync(host.buffer().data, data_, bytes(), cudaMemcpyDeviceToHost, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    return host;
  }

 private:
  DataType dtype_;
  size_t count_;
  int device_;
  void* data_ = nullptr;
};

// Holds a stream at a host function until Open(): what is enqueued on the
// stream after the gate waits for it. The destructor opens it and drains
// the device.
class StreamGate {
 public:
  explicit StreamGate(cudaStream_t stream) {
    CUDA_OK(cudaLaunchHostFunc(stream, &StreamGate::Hold, this));
  }
  ~StreamGate() {
    Open();
    (void)cudaDeviceSynchronize();
  }
  void Open() { open_ = true; }

 private:
  static void Hold(void* self) {
    while (!static_cast<StreamGate*>(self)->open_.load())
      std::this_thread::sleep_for(milliseconds(1));
  }
  std::atomic<bool> open_{false};
};

// A world of GetParam() ranks, one thread and GPU per rank.
class NcclWorldTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    int devices = DeviceCount();
    if (devices < GetParam()) {
      GTEST_SKIP() << "needs " << GetParam() << " CUDA device(s); this process sees " << devices
                   << " (cudaGetDeviceCount)";
    }
    server_ = control::testing::StartServer();
  }

  // Runs fn(communicator, stream) on rank r's thread, with cuda:r current.
  void RunRanks(const std::function<void(Communicator&, cudaStream_t)>& fn,
                NcclCommunicatorOptions options = {}) {
    std::vector<std::thread> threads;
    threads.reserve(GetParam());
    for (int r = 0; r < GetParam(); ++r) {
      threads.emplace_back([&, r] {
        try {
          CUDA_OK(cudaSetDevice(r));
          control::ControlClient client(control::testing::ClientFor(*server_, r));
          auto comm = CreateNcclCommunicator(&client, r, GetParam(), r, options);
          cudaStream_t stream = nullptr;
          CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
          fn(*comm, stream);
          comm.reset();
          CUDA_OK(cudaStreamDestroy(stream));
        } catch (const std::exception& e) {
          ADD_FAILURE() << "rank " << r << ": " << e.what();
        }
      });
    }
    for (auto& t : threads) t.join();
  }

  std::unique_ptr<control::ControlServer> server_;
};

INSTANTIATE_TEST_SUITE_P(Worlds, NcclWorldTest, ::testing::Values(1, 2));

TEST_P(NcclWorldTest, AllreduceEveryOpAndDtype) {
  constexpr size_t kCount = 37;
  RunRanks([&](Communicator& comm, cudaStream_t stream) {
    for (DataType dtype : kAllDataTypes) {
      for (ReduceOp op : kAllReduceOps) {
        HostBuffer host(dtype, Values(dtype, comm.rank(), kCount));
        DeviceBuffer data(dtype, kCount, comm.rank());
        data.Upload(host, stream);
        comm.Allreduce(data.buffer(), {.op = op, .stream = stream})->Wait(kWait);
        HostBuffer result = data.Download(stream);
        for (size_t i = 0; i < kCount; ++i) {
          ASSERT_EQ(result.Get(i), Expected(dtype, op, comm.size(), i))
              << DataTypeName(dtype) << " " << ReduceOpName(op) << " element " << i;
        }
      }
    }
  });
}

TEST_P(NcclWorldTest, ReduceScatterEveryOpAndDtype) {
  constexpr size_t kBlock = 5;
  RunRanks([&](Communicator& comm, cudaStream_t stream) {
    size_t total = kBlock * static_cast<size_t>(comm.size());
    for (DataType dtype : kAllDataTypes) {
      for (ReduceOp op : kAllReduceOps) {
        HostBuffer host(dtype, Values(dtype, comm.rank(), total));
        DeviceBuffer input(dtype, total, comm.rank());
        DeviceBuffer output(dtype, kBlock, comm.rank());
        input.Upload(host, stream);
        comm.ReduceScatter(input.buffer(), output.buffer(), {.op = op, .stream = stream})
            ->Wait(kWait);
        HostBuffer result = output.Download(stream);
        for (size_t i = 0; i < kBlock; ++i) {
          ASSERT_EQ(result.Get(i), Expected(dtype, op, comm.size(), comm.rank() * kBlock + i))
              << DataTypeName(dtype) << " " << ReduceOpName(op) << " element " << i;
        }
      }
    }
  });
}

TEST_P(NcclWorldTest, BroadcastFromEveryRoot) {
  constexpr size_t kCount = 19;
  RunRanks([&](Communicator& comm, cudaStream_t stream) {
    for (DataType dtype : kAllDataTypes) {
      for (int root = 0; root < comm.size(); ++root) {
        HostBuffer host(dtype, Values(dtype, comm.rank(), kCount));
        DeviceBuffer data(dtype, kCount, comm.rank());
        data.Upload(host, stream);
        comm.Broadcast(data.buffer(), {.root = root, .stream = stream})->Wait(kWait);
        HostBuffer result = data.Download(stream);
        for (size_t i = 0; i < kCount; ++i) ASSERT_EQ(result.Get(i), Value(dtype, root, i));
      }
    }
  });
}

TEST_P(NcclWorldTest, AllgatherOutOfPlaceAndInPlace) {
  constexpr size_t kCount = 11;
  RunRanks([&](Communicator& comm, cudaStream_t stream) {
    size_t n = static_cast<size_t>(comm.size());
    size_t r = static_cast<size_t>(comm.rank());
    for (DataType dtype : kAllDataTypes) {
      HostBuffer mine(dtype, Values(dtype, comm.rank(), kCount));
      DeviceBuffer input(dtype, kCount, comm.rank());
      DeviceBuffer output(dtype, kCount * n, comm.rank());
      input.Upload(mine, stream);
      comm.Allgather(input.buffer(), output.buffer(), {.stream = stream})->Wait(kWait);
      HostBuffer gathered = output.Download(stream);
      // In place: this rank's block of the output is the input.
      DeviceBuffer in_place(dtype, kCount * n, comm.rank());
      HostBuffer staged(dtype, kCount * n);
      for (size_t i = 0; i < kCount; ++i) staged.Set(r * kCount + i, mine.Get(i));
      in_place.Upload(staged, stream);
      comm.Allgather(in_place.slice(r * kCount, kCount), in_place.buffer(), {.stream = stream})
          ->Wait(kWait);
      HostBuffer gathered_in_place = in_place.Download(stream);
      for (size_t b = 0; b < n; ++b) {
        for (size_t i = 0; i < kCount; ++i) {
          double expected = Value(dtype, static_cast<int>(b), i);
          ASSERT_EQ(gathered.Get(b * kCount + i), expected) << DataTypeName(dtype);
          ASSERT_EQ(gathered_in_place.Get(b * kCount + i), expected) << DataTypeName(dtype);
        }
      }
    }
  });
}

TEST_P(NcclWorldTest, BarrierAndEmptyCollectivesComplete) {
  RunRanks([&](Communicator& comm, cudaStream_t stream) {
    comm.Barrier({.stream = stream})->Wait(kWait);
    Buffer empty{nullptr, 0, DataType::kFloat32, Device{DeviceType::kCuda, comm.rank()}};
    comm.Allreduce(empty, {.stream = stream})->Wait(kWait);
    comm.Barrier({})->Wait(kWait);  // the legacy default stream
  });
}

// Rank 1 forms the communicator, then never joins rank 0's allreduce. Both
// close their communicators once rank 0 is done; rank 1's close is bounded by
// formation_timeout (its peer aborted).
TEST_P(NcclWorldTest, TimeoutWhenARankNeverJoinsAbortsAndBreaks) {
  if (GetParam() < 2) GTEST_SKIP() << "needs a second rank";
  std::atomic<bool> done{false};
  NcclCommunicatorOptions options;
  options.formation_timeout = milliseconds(15000);
  RunRanks(
      [&](Communicator& comm, cudaStream_t stream) {
        if (comm.rank() != 0) {
          while (!done) std::this_thread::sleep_for(milliseconds(10));
          return;
        }
        struct Release {  // rank 1 leaves even if an assertion returns early
          std::atomic<bool>& done;
          ~Release() { done = true; }
        } release{done};
        DeviceBuffer data(DataType::kFloat32, 1024, 0);
        auto work = comm.Allreduce(data.buffer(), {.timeout = milliseconds(500), .stream = stream});
        EXPECT_THROW(work->Wait(kWait), TimeoutError);
        EXPECT_EQ(work->Result()->code(), StatusCode::kTimeout);
        auto later = comm.Barrier({.stream = stream});
        ASSERT_TRUE(later->IsCompleted());
        EXPECT_EQ(later->Result()->code(), StatusCode::kAborted);
      },
      options);
}

// A world of one on cuda:0 with its own stream.
class NcclCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!NcclAvailable()) {
      GTEST_SKIP() << "no CUDA device visible (cudaGetDeviceCount failed or found none)";
    }
    server_ = control::testing::StartServer();
    client_ = std::make_unique<control::ControlClient>(control::testing::ClientFor(*server_, 0));
    CUDA_OK(cudaSetDevice(0));
    comm_ = CreateNcclCommunicator(client_.get(), 0, 1, 0);
    CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    comm_.reset();
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  std::unique_ptr<control::ControlServer> server_;
  std::unique_ptr<control::ControlClient> client_;
  std::unique_ptr<Communicator> comm_;
  cudaStream_t stream_ = nullptr;
};

TEST_F(NcclCommunicatorTest, FloorDivideKernelFloorsIntegers) {
  const std::vector<double> signed_values = {-128, -7, -6, -5, -4, -1, 0, 1, 4, 5, 6, 7, 127};
  const std::vector<double> unsigned_values = {0, 1, 2, 5, 6, 7, 128, 200, 255};
  for (DataType dtype : {DataType::kInt32, DataType::kInt64, DataType::kInt8, DataType::kUInt8}) {
    const auto& values = dtype == DataType::kUInt8 ? unsigned_values : signed_values;
    for (int divisor : {1, 2, 3, 4, 200}) {
      HostBuffer host(dtype, values);
      DeviceBuffer data(dtype, values.size(), 0);
      data.Upload(host, stream_);
      CUDA_OK(LaunchFloorDivide(data.buffer().data, values.size(), dtype, divisor, stream_));
      HostBuffer result = data.Download(stream_);
      for (size_t i = 0; i < values.size(); ++i) {
        EXPECT_EQ(result.Get(i), std::floor(values[i] / divisor))
            << DataTypeName(dtype) << " " << values[i] << " // " << divisor;
      }
    }
  }
  DeviceBuffer floats(DataType::kFloat32, 4, 0);
  EXPECT_EQ(LaunchFloorDivide(floats.buffer().data, 4, DataType::kFloat32, 2, stream_),
            cudaErrorInvalidValue);
}

TEST_F(NcclCommunicatorTest, WaitsForTheCallersStreamAndWaitOnStreamOrdersAnother) {
  constexpr size_t kCount = 1 << 20;
  HostBuffer expected(DataType::kFloat32, Values(DataType::kFloat32, 3, kCount));
  void* pinned_in = nullptr;
  void* pinned_out = nullptr;
  CUDA_OK(cudaMallocHost(&pinned_in, kCount * sizeof(float)));
  CUDA_OK(cudaMallocHost(&pinned_out, kCount * sizeof(float)));
  std::memcpy(pinned_in, expected.buffer().data, kCount * sizeof(float));
  std::memset(pinned_out, 0, kCount * sizeof(float));
  DeviceBuffer input(DataType::kFloat32, kCount, 0);
  DeviceBuffer output(DataType::kFloat32, kCount, 0);
  cudaStream_t reader = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&reader, cudaStreamNonBlocking));
  {
    StreamGate gate(stream_);  // the input arrives only once the gate opens
    CUDA_OK(cudaMemcpyAsync(input.buffer().data, pinned_in, kCount * sizeof(float),
                            cudaMemcpyHostToDevice, stream_));
    auto work = comm_->Allgather(input.buffer(), output.buffer(), {.stream = stream_});
    std::this_thread::sleep_for(milliseconds(300));
    EXPECT_FALSE(work->IsCompleted()) << "the collective did not wait for the caller's stream";
    auto cuda_work = std::dynamic_pointer_cast<CudaWork>(work);
    ASSERT_NE(cuda_work, nullptr);
    cuda_work->WaitOnStream(reader);  // the host does not wait
    CUDA_OK(cudaMemcpyAsync(pinned_out, output.buffer().data, kCount * sizeof(float),
                            cudaMemcpyDeviceToHost, reader));
    gate.Open();
    CUDA_OK(cudaStreamSynchronize(reader));
    work->Wait(kWait);
  }
  EXPECT_EQ(std::memcmp(pinned_out, expected.buffer().data, kCount * sizeof(float)), 0)
      << "the reader stream copied the output before the collective wrote it";
  CUDA_OK(cudaStreamDestroy(reader));
  CUDA_OK(cudaFreeHost(pinned_in));
  CUDA_OK(cudaFreeHost(pinned_out));
}

TEST_F(NcclCommunicatorTest, CapturedIntoAGraphAndReplayed) {
  constexpr size_t kCount = 4096;
  DeviceBuffer input(DataType::kFloat32, kCount, 0);
  DeviceBuffer output(DataType::kFloat32, kCount, 0);
  DeviceBuffer reduced(DataType::kInt32, kCount, 0);
  // Global mode: the completion thread must not invalidate the capture.
  CUDA_OK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
  auto allreduce = comm_->Allreduce(reduced.buffer(), {.op = ReduceOp::kAvg, .stream = stream_});
  auto allgather = comm_->Allgather(input.buffer(), output.buffer(), {.stream = stream_});
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamEndCapture(stream_, &graph));
  EXPECT_TRUE(allreduce->IsCompleted());  // recorded into the graph
  allreduce->Wait(milliseconds(0));
  allgather->Wait(milliseconds(0));
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 3; ++replay) {
    HostBuffer values(DataType::kFloat32, Values(DataType::kFloat32, replay, kCount));
    HostBuffer ints(DataType::kInt32, Values(DataType::kInt32, replay, kCount));
    input.Upload(values, stream_);
    reduced.Upload(ints, stream_);
    CUDA_OK(cudaGraphLaunch(exec, stream_));
    CUDA_OK(cudaStreamSynchronize(stream_));
    HostBuffer gathered = output.Download(stream_);
    HostBuffer averaged = reduced.Download(stream_);
    for (size_t i = 0; i < kCount; ++i) {
      ASSERT_EQ(gathered.Get(i), values.Get(i)) << "replay " << replay << " element " << i;
      ASSERT_EQ(averaged.Get(i), ints.Get(i)) << "replay " << replay << " element " << i;
    }
  }
  CUDA_OK(cudaGraphExecDestroy(exec));  // before the communicator
  CUDA_OK(cudaGraphDestroy(graph));
}

TEST_F(NcclCommunicatorTest, TimeoutAbortsAndBreaks) {
  DeviceBuffer data(DataType::kFloat32, 16, 0);
  {
    StreamGate gate(stream_);  // the collective cannot start before the gate opens
    auto work = comm_->Allreduce(data.buffer(), {.timeout = milliseconds(300), .stream = stream_});
    try {
      work->Wait(kWait);
      ADD_FAILURE() << "the gated collective completed";
    } catch (const TimeoutError& e) {
      EXPECT_NE(std::string(e.what()).find("did not complete within its timeout"),
                std::string::npos)
          << e.what();
    }
    EXPECT_EQ(work->Result()->code(), StatusCode::kTimeout);
    auto later = comm_->Allreduce(data.buffer(), {.stream = stream_});
    ASSERT_TRUE(later->IsCompleted());
    EXPECT_EQ(later->Result()->code(), StatusCode::kAborted);
    EXPECT_THROW(std::dynamic_pointer_cast<CudaWork>(later)->WaitOnStream(stream_), Error);
  }  // opens the gate and drains the device before the broken communicator goes
}

TEST_F(NcclCommunicatorTest, RejectsBuffersOffItsDevice) {
  float host = 0;
  Buffer cpu{&host, 1, DataType::kFloat32, Device{}};
  EXPECT_THROW(comm_->Allreduce(cpu, {}), Error);
  Buffer other{&host, 1, DataType::kFloat32, Device{DeviceType::kCuda, 1}};
  try {
    comm_->Allreduce(other, {});
    ADD_FAILURE() << "a buffer on cuda:1 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is on cuda:1"), std::string::npos) << e.what();
  }
}

TEST_F(NcclCommunicatorTest, SeveralCommunicatorsFormInOrder) {
  auto second = CreateNcclCommunicator(client_.get(), 0, 1, 0);
  DeviceBuffer data(DataType::kFloat32, 8, 0);
  comm_->Allreduce(data.buffer(), {.stream = stream_})->Wait(kWait);
  second->Allreduce(data.buffer(), {.stream = stream_})->Wait(kWait);
  EXPECT_STREQ(second->backend(), "nccl");
}

}  // namespace
}  // namespace terra::comm
