// The communicator under test and the memory its buffers live in.
#pragma once

#include <cstddef>
#include <memory>

#include "comm/bench/options.h"
#include "comm/communicator.h"
#include "comm/control/client.h"
#include "comm/control/environment.h"
#include "comm/mpi_communicator.h"

namespace terra::comm::bench {

// Memory on the device under test, and copies between it and host memory
// (to fill inputs and check results). Copies block until done. Not
// thread-safe; the harness uses it from the main thread only.
class BenchMemory {
 public:
  virtual ~BenchMemory() = default;
  virtual Device device() const = 0;
  // `bytes` of device memory, freed when the last copy of the pointer goes.
  virtual std::shared_ptr<void> Allocate(size_t bytes) = 0;
  virtual void CopyToDevice(void* device, const void* host, size_t bytes) = 0;
  virtual void CopyToHost(void* host, const void* device, size_t bytes) = 0;
};

// Host memory (page-aligned malloc), for backends on CPU buffers.
std::unique_ptr<BenchMemory> CreateHostMemory();

struct Backend {
  std::unique_ptr<BenchMemory> memory;
  std::unique_ptr<Communicator> comm;
  // `comm` itself when it is an MpiCommunicator (the raw MPI_Allreduce
  // baseline runs on its progress thread), else null.
  MpiCommunicator* mpi = nullptr;
};

// Joins the job's communicator for options.device: MpiCommunicator on host
// memory for cpu, NCCL on the rank's LOCAL_RANK GPU for cuda. Collective:
// every rank calls it, and it blocks until all have. `client` is used only
// during the call. Throws UsageError for a device this build cannot serve.
Backend CreateBackend(const BenchOptions& options, const control::JobEnvironment& job,
                      control::ControlClient* client);

// The cuda half of CreateBackend: backend_nccl.cc in a build with NCCL,
// backend_no_nccl.cc (which throws UsageError) without.
Backend CreateNcclBackend(const control::JobEnvironment& job, control::ControlClient* client);

}  // namespace terra::comm::bench
