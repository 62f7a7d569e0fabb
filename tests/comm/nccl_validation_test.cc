// CreateNcclCommunicator's refusals, which need no GPU: the arguments it
// checks before touching CUDA, a process without a CUDA device, and a Terra
// built without NCCL (TERRA_WITH_NCCL=OFF). Runs everywhere; the GPU tests are
// in nccl_communicator_test.cc.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "comm/collective.h"
#include "comm/nccl_communicator.h"
#include "runtime/base/check.h"

namespace terra::comm {
namespace {

constexpr bool kBuiltWithNccl = TERRA_TEST_WITH_NCCL;  // from tests/comm/CMakeLists.txt
constexpr char kWithoutNccl[] =
    "this Terra was built without NCCL: rebuild with the CUDA toolkit and NCCL installed";

// The message of the terra::Error that fn throws ("" if none).
std::string ErrorOf(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// What Create says for arguments a build with NCCL rejects with `message`.
std::string Expect(const std::string& message) { return kBuiltWithNccl ? message : kWithoutNccl; }

TEST(NcclValidationTest, NegativeDeviceIsNotACudaDevice) {
  std::string error = ErrorOf([] { CreateNcclCommunicator(nullptr, 0, 1, -1); });
  EXPECT_NE(error.find(Expect("cuda_device -1 is not a CUDA device ordinal")), std::string::npos)
      << error;
  if (kBuiltWithNccl) {
    EXPECT_NE(error.find("MPI backend"), std::string::npos) << error;
  }
}

TEST(NcclValidationTest, RankOutsideTheWorld) {
  for (auto world : {std::pair{2, 2}, std::pair{-1, 2}, std::pair{0, 0}}) {
    int rank = world.first, size = world.second;
    std::string error = ErrorOf([&] { CreateNcclCommunicator(nullptr, rank, size, 0); });
    EXPECT_NE(error.find(Expect(StrCat("rank ", rank, " is not in a world of ", size))),
              std::string::npos)
        << error;
  }
}

TEST(NcclValidationTest, SeveralRanksNeedAControlClient) {
  std::string error = ErrorOf([] { CreateNcclCommunicator(nullptr, 0, 2, 0); });
  EXPECT_NE(error.find(Expect("a world of 2 ranks needs a ControlClient")), std::string::npos)
      << error;
}

TEST(NcclValidationTest, NoCudaDeviceIsAClearError) {
  if (NcclAvailable()) GTEST_SKIP() << "this process sees a CUDA device";
  std::string error = ErrorOf([] { CreateNcclCommunicator(nullptr, 0, 1, 0); });
  EXPECT_NE(error.find(Expect("this process sees no CUDA device")), std::string::npos) << error;
}

TEST(NcclValidationTest, UnavailableWithoutNccl) {
  if (kBuiltWithNccl) GTEST_SKIP() << "built with NCCL";
  EXPECT_FALSE(NcclAvailable());
  EXPECT_EQ(ErrorOf([] { CreateNcclCommunicator(nullptr, 0, 1, 0); }), kWithoutNccl);
}

TEST(NcclValidationTest, OptionsCarryTheStream) {
  int marker = 0;
  void* stream = &marker;
  Buffer b;
  EXPECT_EQ(Collective::Of(b, AllreduceOptions{.stream = stream}).stream, stream);
  EXPECT_EQ(Collective::Of(b, BroadcastOptions{.stream = stream}).stream, stream);
  EXPECT_EQ(Collective::Of(b, b, AllgatherOptions{.stream = stream}).stream, stream);
  EXPECT_EQ(Collective::Of(b, b, ReduceScatterOptions{.stream = stream}).stream, stream);
  EXPECT_EQ(Collective::Of(BarrierOptions{.stream = stream}).stream, stream);
  EXPECT_EQ(Collective::Of(b, AllreduceOptions{}).stream, nullptr);
}

}  // namespace
}  // namespace terra::comm
