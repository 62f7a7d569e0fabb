#include "comm/bench/raw_mpi.h"

#include <chrono>

#include "comm/mpi_world.h"
#include "runtime/base/check.h"

namespace terra::comm::bench {
namespace {

std::optional<MPI_Op> MpiOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
    default:
      return std::nullopt;
  }
}

void CheckMpi(int rc, const char* call) {
  TERRA_CHECK(rc == MPI_SUCCESS, call, " failed with MPI error ", rc);
}

}  // namespace

bool HasRawMpiAllreduce(DataType dtype, ReduceOp op) {
  return NativeMpiType(dtype).has_value() && MpiOp(op).has_value();
}

double TimeRawMpiAllreduce(MpiCommunicator& comm, Buffer buffer, ReduceOp op, int warmup,
                           int iterations) {
  TERRA_INTERNAL_CHECK(HasRawMpiAllreduce(buffer.dtype, op));
  TERRA_INTERNAL_CHECK(buffer.count <= static_cast<size_t>(INT32_MAX));
  MPI_Datatype type = *NativeMpiType(buffer.dtype);
  MPI_Op mpi_op = *MpiOp(op);
  int count = static_cast<int>(buffer.count);
  double mean_us = 0;
  comm.RunOnProgressThread(
          "raw MPI_Allreduce loop",
          [&](MPI_Comm c) {
            for (int i = 0; i < warmup; ++i) {
              CheckMpi(MPI_Allreduce(MPI_IN_PLACE, buffer.data, count, type, mpi_op, c),
                       "MPI_Allreduce");
            }
            CheckMpi(MPI_Barrier(c), "MPI_Barrier");
            auto start = std::chrono::steady_clock::now();
            for (int i = 0; i < iterations; ++i) {
              CheckMpi(MPI_Allreduce(MPI_IN_PLACE, buffer.data, count, type, mpi_op, c),
                       "MPI_Allreduce");
            }
            std::chrono::duration<double, std::micro> elapsed =
                std::chrono::steady_clock::now() - start;
            mean_us = elapsed.count() / iterations;
          })
      ->Wait();
  return mean_us;
}

}  // namespace terra::comm::bench
