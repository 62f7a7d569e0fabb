// MpiCommunicator: collectives on CPU buffers through Open MPI.
//
// Threading: one progress thread per communicator makes every MPI call of
// the process (MPI is initialized on it with MPI_THREAD_FUNNELED, or must
// already provide MPI_THREAD_MULTIPLE). Collectives are queued by the
// calling threads and run on it one at a time, in submission order, with
// MPI's blocking collectives; each call returns its Work at once.
//
// Timeouts (communicator.h): a watchdog thread fails a collective that
// outlives its options' timeout with kTimeout naming the collective, the
// rank and the host, fails everything queued behind it with kAborted, and
// marks the communicator broken. MPI cannot cancel the stuck collective: the
// rank should report the error and exit; terrarun then stops every rank.
//
// Process-wide: MPI can be initialized once per process, so there is one
// MpiCommunicator per process for the whole job. Its destructor runs what
// is still queued, then frees the MPI communicator and finalizes MPI
// (collective with the other ranks: every rank destroys its communicator).
// A broken communicator's destructor cannot do that: it abandons the
// progress thread stuck in MPI and leaves MPI as it is.
#pragma once

#include <mpi.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "comm/communicator.h"

namespace terra::comm {

namespace control {
class ControlClient;
}

struct MpiCommunicatorOptions {
  // Keys of the control store used to form the world (mpi_world.h).
  std::string store_prefix = "terra/mpi/";
  // Bound on waiting for the other ranks while forming the world.
  std::chrono::milliseconds formation_timeout{120000};
};

class MpiCommunicator final : public Communicator {
 public:
  // Forms the MPI world of `world_size` ranks (mpi_world.h: from mpirun's
  // MPI_COMM_WORLD, or grown from singletons through ompi-server and
  // `client`'s store) and starts the progress thread. Blocks until every rank
  // has joined; every rank calls it. `client` is used only during Create.
  // Throws terra::Error saying what to do when MPI cannot connect the ranks
  // (for ranks started by terrarun: ompi-server missing).
  static std::unique_ptr<MpiCommunicator> Create(control::ControlClient* client, int rank,
                                                 int world_size,
                                                 MpiCommunicatorOptions options = {});
  ~MpiCommunicator() override;

  int rank() const override;
  int size() const override;
  const char* backend() const override { return "mpi"; }

  std::shared_ptr<Work> Allreduce(Buffer buffer, const AllreduceOptions& options) override;
  std::shared_ptr<Work> Broadcast(Buffer buffer, const BroadcastOptions& options) override;
  std::shared_ptr<Work> Allgather(Buffer input, Buffer output,
                                  const AllgatherOptions& options) override;
  std::shared_ptr<Work> ReduceScatter(Buffer input, Buffer output,
                                      const ReduceScatterOptions& options) override;
  std::shared_ptr<Work> Barrier(const BarrierOptions& options) override;

  // Runs `task` on the progress thread, in order with the collectives, with
  // this communicator's MPI_Comm (for benchmarks and MPI calls we do not
  // wrap). An exception thrown by `task` fails the Work. No timeout.
  std::shared_ptr<Work> RunOnProgressThread(std::string description,
                                            std::function<void(MPI_Comm)> task);

 private:
  class Impl;
  explicit MpiCommunicator(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace terra::comm
