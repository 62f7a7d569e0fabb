#include "comm/bench/backend.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace terra::comm::bench {
namespace {

class HostMemory final : public BenchMemory {
 public:
  Device device() const override { return Device{}; }

  // Page-aligned, like the allocations a framework hands to MPI.
  std::shared_ptr<void> Allocate(size_t bytes) override {
    void* data = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    if (data == nullptr) throw std::bad_alloc();
    return std::shared_ptr<void>(data, std::free);
  }

  void CopyToDevice(void* device, const void* host, size_t bytes) override {
    std::memcpy(device, host, bytes);
  }

  void CopyToHost(void* host, const void* device, size_t bytes) override {
    std::memcpy(host, device, bytes);
  }
};

}  // namespace

std::unique_ptr<BenchMemory> CreateHostMemory() { return std::make_unique<HostMemory>(); }

Backend CreateBackend(const BenchOptions& options, const control::JobEnvironment& job,
                      control::ControlClient* client) {
  if (options.device == DeviceType::kCuda) return CreateNcclBackend(job, client);
  Backend backend;
  backend.memory = CreateHostMemory();
  auto mpi = MpiCommunicator::Create(client, job.rank, job.world_size);
  backend.mpi = mpi.get();
  backend.comm = std::move(mpi);
  return backend;
}

}  // namespace terra::comm::bench
