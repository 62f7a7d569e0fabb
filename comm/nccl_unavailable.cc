// CreateNcclCommunicator and NcclAvailable in a Terra built without NCCL
// (TERRA_WITH_NCCL=OFF, cmake/terra_nccl.cmake): the runtime asks
// NcclAvailable() and keeps CUDA buffers off the NCCL backend.
#include "comm/nccl_communicator.h"
#include "runtime/base/check.h"

namespace terra::comm {

std::unique_ptr<Communicator> CreateNcclCommunicator(control::ControlClient*, int, int, int,
                                                     NcclCommunicatorOptions) {
  throw Error(
      "this Terra was built without NCCL: rebuild with the CUDA toolkit and NCCL installed");
}

bool NcclAvailable() { return false; }

}  // namespace terra::comm
