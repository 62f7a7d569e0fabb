// The baseline beside allreduce: plain MPI_Allreduce(MPI_IN_PLACE, ...) in a
// loop on MpiCommunicator's progress thread, so on the same MPI communicator,
// thread and buffer as the Communicator's allreduce; what remains between the
// two is the Communicator's own cost (queueing, the handoff to the progress
// thread, Work completion and wake-up).
#pragma once

#include <optional>

#include "comm/mpi_communicator.h"
#include "comm/types.h"

namespace terra::comm::bench {

// True when MPI has the same datatype and operation (not float16, bfloat16
// or avg, which the Communicator implements on top of MPI).
bool HasRawMpiAllreduce(DataType dtype, ReduceOp op);

// This rank's mean time in microseconds of `iterations` back-to-back
// MPI_Allreduce calls on `buffer` (a host buffer), after `warmup` untimed
// ones and an MPI_Barrier. Collective: blocks until done on every rank.
// Requires HasRawMpiAllreduce(buffer.dtype, op).
double TimeRawMpiAllreduce(MpiCommunicator& comm, Buffer buffer, ReduceOp op, int warmup,
                           int iterations);

}  // namespace terra::comm::bench
