// CreateNcclBackend in a build with NCCL (TERRA_WITH_NCCL): the NCCL
// communicator on the rank's LOCAL_RANK GPU and cudaMalloc'd buffers.
#include <cuda_runtime_api.h>

#include "comm/bench/backend.h"
#include "comm/nccl_communicator.h"

namespace terra::comm::bench {
namespace {

void CheckCuda(cudaError_t rc, const char* call) {
  TERRA_CHECK(rc == cudaSuccess, call, " failed: ", cudaGetErrorName(rc), " (",
              cudaGetErrorString(rc), ")");
}

// Copies are synchronous on the legacy default stream, which the NCCL
// communicator orders its collectives after (stream nullptr in the options).
class CudaMemory final : public BenchMemory {
 public:
  explicit CudaMemory(int device) : device_(device) {}

  Device device() const override { return Device{DeviceType::kCuda, device_}; }

  std::shared_ptr<void> Allocate(size_t bytes) override {
    CheckCuda(cudaSetDevice(device_), "cudaSetDevice");
    void* data = nullptr;
    CheckCuda(cudaMalloc(&data, bytes), "cudaMalloc");
    return std::shared_ptr<void>(data, [](void* p) { cudaFree(p); });
  }

  void CopyToDevice(void* device, const void* host, size_t bytes) override {
    CheckCuda(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
    CheckCuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  }

  void CopyToHost(void* host, const void* device, size_t bytes) override {
    CheckCuda(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
  }

 private:
  int device_;
};

}  // namespace

Backend CreateNcclBackend(const control::JobEnvironment& job, control::ControlClient* client) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  if (devices == 0) {
    throw UsageError(
        "--device cuda: this process sees no CUDA device; run on a machine with "
        "GPUs (one per rank), or use --device cpu");
  }
  if (job.local_rank >= devices) {
    throw UsageError(StrCat("--device cuda: rank ", job.rank, " has LOCAL_RANK ", job.local_rank,
                            " but this host has ", devices,
                            " CUDA devices; start at most one rank per GPU"));
  }
  Backend backend;
  backend.memory = std::make_unique<CudaMemory>(job.local_rank);
  backend.comm = CreateNcclCommunicator(client, job.rank, job.world_size, job.local_rank);
  return backend;
}

}  // namespace terra::comm::bench
