// What the NCCL backend's files share: the checks that wrap every CUDA and
// NCCL call (naming the call, file, line, rank and host), our types in NCCL's
// terms, and a current-device guard. Internal to comm/'s NCCL files: they
// alone include cuda_runtime_api.h and nccl.h.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <string>

#include "comm/types.h"

namespace terra::comm {

// Names the rank and host in every CUDA and NCCL error.
struct NcclContext {
  int rank = -1;
  std::string host;
};

std::string HostName();

// "cudaErrorInvalidValue (invalid argument)".
std::string CudaErrorText(cudaError_t rc);
// "unhandled system error (NCCL: <ncclGetLastError>)".
std::string NcclErrorText(ncclResult_t rc);

// Throws terra::Error "cudaEventRecord(...) failed at file:line on rank r
// (host h): <CudaErrorText>" when rc is not cudaSuccess.
void CheckCuda(cudaError_t rc, const char* call, const char* file, int line,
               const NcclContext& context);

// The same for NCCL. ncclInProgress counts as a failure here: it is what a
// non-blocking call still answers when its deadline has passed, and it throws
// terra::TimeoutError.
void CheckNccl(ncclResult_t rc, const char* call, const char* file, int line,
               const NcclContext& context);

ncclDataType_t NcclType(DataType dtype);

// kAvg is ncclAvg for floating point and ncclSum for integers, which the
// caller then floor-divides (nccl_kernels.h): ncclAvg truncates integers.
ncclRedOp_t NcclOp(ReduceOp op, DataType dtype);

// The unique id as 256 hex digits, for the control store; false if `hex` is not one.
std::string UniqueIdToHex(const ncclUniqueId& id);
bool UniqueIdFromHex(const std::string& hex, ncclUniqueId* id);

// Makes `device` the calling thread's current CUDA device for its lifetime,
// then restores the previous one. Throws (CheckCuda) if it cannot switch.
class DeviceGuard {
 public:
  DeviceGuard(int device, const NcclContext& context);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

}  // namespace terra::comm

#define TERRA_CUDA_CHECK(context, call) \
  ::terra::comm::CheckCuda((call), #call, __FILE__, __LINE__, (context))
#define TERRA_NCCL_CHECK(context, call) \
  ::terra::comm::CheckNccl((call), #call, __FILE__, __LINE__, (context))
