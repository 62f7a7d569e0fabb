// Device kernels the NCCL backend runs after NCCL's own collectives.
// Internal to NcclCommunicator; tests call them directly.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "comm/types.h"

namespace terra::comm {

// Enqueues data[i] = floor(data[i] / divisor) on `stream` for the `count`
// elements of an integer dtype: Python's //, the rounding of ReduceOp::kAvg
// (types.h). divisor > 0. Returns the launch's error (cudaErrorInvalidValue
// for a floating-point dtype or a divisor < 1); count 0 launches nothing.
cudaError_t LaunchFloorDivide(void* data, size_t count, DataType dtype, int divisor,
                              cudaStream_t stream);

}  // namespace terra::comm
