// Forming the MPI communicator of a Terra job, and the check that wraps every
// MPI call. Internal to MpiCommunicator: every function here must run on the
// one thread that makes all of this process's MPI calls.
//
// Two ways a job reaches MPI:
//  - Launched by mpirun (OMPI_COMM_WORLD_SIZE is set; terrarun -H/--hostfile
//    does this): MPI_COMM_WORLD already holds every rank; it is duplicated.
//  - Launched by terrarun on one host: each rank's MPI_Init makes a singleton,
//    a world of one. Singletons can connect only through ompi-server, which
//    terrarun starts and names to the ranks in OMPI_MCA_pmix_server_uri
//    (docs/launcher.md). The world is grown one rank at a time, through the
//    control plane's store:
//      1. Rank 0 opens an MPI port and publishes its name under <prefix>port.
//      2. For k = 1 .. N-1: rank 0 publishes <prefix>turn/<k>; the group of
//         ranks 0..k-1 (an intracommunicator) calls MPI_Comm_accept together;
//         rank k, which waited for its turn key, reads the port and calls
//         MPI_Comm_connect; all of them merge the intercommunicator with the
//         newcomer ordered last (MPI_Intercomm_merge, high = newcomer).
//         Turns keep two newcomers from racing for one accept.
//      3. MPI ranks then equal Terra ranks (checked; reordered with
//         MPI_Comm_split if ever not), and rank 0 closes the port.
//    Waiting for the port and for a turn is bounded by formation_timeout;
//    MPI_Comm_accept and MPI_Comm_connect are not (MPI gives no way to): a
//    rank that dies during formation leaves the others blocked until
//    terrarun, which sees the death, stops them.
#pragma once

#include <mpi.h>

#include <chrono>
#include <optional>
#include <string>

#include "comm/types.h"

namespace terra::comm {

namespace control {
class ControlClient;
}

// Names the rank and host in every MPI error.
struct MpiContext {
  int rank = -1;
  std::string host;
};

// Throws terra::Error "MPI_Allreduce(...) failed at file:line on rank r (host
// h): <MPI's message>" when rc is not MPI_SUCCESS.
void CheckMpi(int rc, const char* call, const char* file, int line, const MpiContext& context);

#define TERRA_MPI_CHECK(context, call) \
  ::terra::comm::CheckMpi((call), #call, __FILE__, __LINE__, (context))

struct MpiWorldOptions {
  std::string store_prefix = "terra/mpi/";
  std::chrono::milliseconds formation_timeout{120000};
};

struct MpiWorld {
  MPI_Comm comm = MPI_COMM_NULL;  // ranks equal Terra ranks; errors return
  bool finalize = false;          // we initialized MPI, so we finalize it
};

// Initializes MPI (MPI_THREAD_FUNNELED, from the calling thread) unless it
// already is (then it must provide MPI_THREAD_MULTIPLE) and forms the world.
// Blocks until every rank has joined. Throws terra::Error naming what to do
// (ompi-server missing, MPI finalized already, world size mismatch).
MpiWorld FormMpiWorld(control::ControlClient* client, int rank, int world_size,
                      const MpiWorldOptions& options, const MpiContext& context);

// MPI's own datatype for `dtype`, or nullopt for the 16-bit floating point
// types, which MPI lacks (MpiCommunicator reduces those with its own ops).
std::optional<MPI_Datatype> NativeMpiType(DataType dtype);

// Frees the communicator and finalizes MPI if FormMpiWorld initialized it.
// MPI_Finalize waits for every connected rank to finalize too.
void CloseMpiWorld(MpiWorld* world, const MpiContext& context);

}  // namespace terra::comm
