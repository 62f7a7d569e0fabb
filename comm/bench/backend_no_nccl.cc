// CreateNcclBackend in a build without NCCL (TERRA_WITH_NCCL=OFF;
// comm/bench/CMakeLists.txt picks this file or backend_nccl.cc).
#include "comm/bench/backend.h"

namespace terra::comm::bench {

Backend CreateNcclBackend(const control::JobEnvironment& job, control::ControlClient* client) {
  throw UsageError(
      "--device cuda: this terra-bench-collectives was built without NCCL "
      "(TERRA_WITH_NCCL=OFF); rebuild Terra where the CUDA toolkit and NCCL are found "
      "(cmake/terra_nccl.cmake), or run with --device cpu");
}

}  // namespace terra::comm::bench
