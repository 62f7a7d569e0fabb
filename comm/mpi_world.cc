#include "comm/mpi_world.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "comm/control/client.h"
#include "runtime/base/check.h"
#include "runtime/base/log.h"

namespace terra::comm {
namespace {

constexpr const char* kServerUriVariable = "OMPI_MCA_pmix_server_uri";

// Singletons started by terrarun can connect only through ompi-server.
void CheckOmpiServer(int world_size) {
  const char* uri = std::getenv(kServerUriVariable);
  TERRA_CHECK(
      uri != nullptr && *uri != '\0',
      "MPI collectives across ranks started by terrarun need ompi-server: this rank (one of ",
      world_size, ") was started without ", kServerUriVariable,
      ". Install Open MPI's ompi-server (Debian: openmpi-bin) so that terrarun finds it on "
      "PATH and starts it, or launch with mpirun / terrarun -H.");
  std::string value = uri;
  if (value.rfind("file:", 0) == 0) {
    struct stat info {};
    TERRA_CHECK(
        ::stat(value.c_str() + 5, &info) == 0,
        "MPI collectives across ranks started by terrarun need ompi-server, but its URI file ",
        value.substr(5), " (named by ", kServerUriVariable,
        ") does not exist: ompi-server did not start or has exited");
  }
}

// Connected singletons are different Open MPI jobs, and Open MPI 4's
// shared-memory BTL (vader) only joins ranks of one job, so with the default
// PML they talk over TCP loopback (4x slower at 1 MiB, measured in
// docs/comm.md). The UCX PML connects by worker address, not by job, and
// uses shared memory between any two local processes. It is chosen when the
// component is installed and the user has not chosen a PML.
void PreferUcxBetweenSingletons() {
  if (std::getenv("OMPI_MCA_pml") != nullptr) return;
  if (::access(TERRA_OMPI_PML_UCX_COMPONENT, R_OK) != 0) return;
  ::setenv("OMPI_MCA_pml", "ucx", 0);
  // Without these, Open MPI takes UCX only over InfiniBand devices.
  ::setenv("OMPI_MCA_pml_ucx_tls", "any", 0);
  ::setenv("OMPI_MCA_pml_ucx_devices", "any", 0);
}

void InitMpi(int world_size, bool singleton, MpiWorld* world, const MpiContext& context) {
  int finalized = 0, initialized = 0;
  TERRA_MPI_CHECK(context, MPI_Finalized(&finalized));
  TERRA_CHECK(!finalized,
              "MPI was finalized already in this process and cannot be initialized again: "
              "create one MpiCommunicator per process and keep it for the whole job");
  TERRA_MPI_CHECK(context, MPI_Initialized(&initialized));
  if (!initialized) {
    if (singleton && world_size > 1) {
      CheckOmpiServer(world_size);
      PreferUcxBetweenSingletons();
    }
    int provided = 0;
    TERRA_MPI_CHECK(context, MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
    world->finalize = true;
    TERRA_CHECK(provided >= MPI_THREAD_FUNNELED, "MPI provides thread level ", provided,
                " but MpiCommunicator needs MPI_THREAD_FUNNELED (all calls from its own thread)");
  } else {
    int provided = 0;
    TERRA_MPI_CHECK(context, MPI_Query_thread(&provided));
    TERRA_CHECK(provided == MPI_THREAD_MULTIPLE,
                "MPI was initialized before MpiCommunicator, with thread level ", provided,
                "; MpiCommunicator calls MPI from its own thread, which then needs "
                "MPI_THREAD_MULTIPLE (or let MpiCommunicator initialize MPI)");
  }
  TERRA_MPI_CHECK(context, MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  TERRA_MPI_CHECK(context, MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN));
}

// The group (ranks < k) accepts rank k, or rank k connects; both merge.
MPI_Comm AddRank(control::ControlClient* client, MPI_Comm group, int rank, int k, const char* port,
                 const MpiWorldOptions& options, const MpiContext& context) {
  MPI_Comm inter = MPI_COMM_NULL;
  std::string turn_key = StrCat(options.store_prefix, "turn/", k);
  if (rank < k) {
    if (rank == 0) client->Set(turn_key, "1");
    TERRA_MPI_CHECK(context, MPI_Comm_accept(port, MPI_INFO_NULL, 0, group, &inter));
  } else {
    client->Get(turn_key, options.formation_timeout);
    std::string port_name = client->Get(options.store_prefix + "port", options.formation_timeout);
    TERRA_MPI_CHECK(context,
                    MPI_Comm_connect(port_name.c_str(), MPI_INFO_NULL, 0, MPI_COMM_SELF, &inter));
  }
  TERRA_MPI_CHECK(context, MPI_Comm_set_errhandler(inter, MPI_ERRORS_RETURN));
  MPI_Comm merged = MPI_COMM_NULL;
  TERRA_MPI_CHECK(context, MPI_Intercomm_merge(inter, rank == k ? 1 : 0, &merged));
  TERRA_MPI_CHECK(context, MPI_Comm_free(&inter));
  if (group != MPI_COMM_NULL) TERRA_MPI_CHECK(context, MPI_Comm_free(&group));
  return merged;
}

MPI_Comm GrowFromSingletons(control::ControlClient* client, int rank, int world_size,
                            const MpiWorldOptions& options, const MpiContext& context) {
  MPI_Comm comm = MPI_COMM_NULL;
  if (world_size == 1) {
    TERRA_MPI_CHECK(context, MPI_Comm_dup(MPI_COMM_SELF, &comm));
    return comm;
  }
  TERRA_CHECK(client != nullptr, "MpiCommunicator needs a ControlClient to form a world of ",
              world_size, " ranks started by terrarun");
  char port[MPI_MAX_PORT_NAME] = {};
  if (rank == 0) {
    TERRA_MPI_CHECK(context, MPI_Comm_dup(MPI_COMM_SELF, &comm));
    TERRA_MPI_CHECK(context, MPI_Open_port(MPI_INFO_NULL, port));
    client->Set(options.store_prefix + "port", port);
  }
  for (int k = 1; k < world_size; ++k) {
    if (rank <= k) comm = AddRank(client, comm, rank, k, port, options, context);
  }
  if (rank == 0) TERRA_MPI_CHECK(context, MPI_Close_port(port));
  return comm;
}

// Makes MPI rank == Terra rank, keeping the communicator's size checked.
MPI_Comm OrderByTerraRank(MPI_Comm comm, int rank, int world_size, const MpiContext& context) {
  int size = 0, mpi_rank = 0;
  TERRA_MPI_CHECK(context, MPI_Comm_size(comm, &size));
  TERRA_MPI_CHECK(context, MPI_Comm_rank(comm, &mpi_rank));
  TERRA_CHECK(size == world_size, "MPI formed a world of ", size,
              " processes, but the Terra job has ", world_size,
              " ranks (WORLD_SIZE); launch every rank the same way");
  if (mpi_rank == rank) return comm;
  TERRA_LOG(kInfo, "MPI rank ", mpi_rank, " is Terra rank ", rank, ": reordering");
  MPI_Comm ordered = MPI_COMM_NULL;
  TERRA_MPI_CHECK(context, MPI_Comm_split(comm, 0, rank, &ordered));
  TERRA_MPI_CHECK(context, MPI_Comm_free(&comm));
  return ordered;
}

}  // namespace

void CheckMpi(int rc, const char* call, const char* file, int line, const MpiContext& context) {
  if (rc == MPI_SUCCESS) return;
  char message[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(rc, message, &length) != MPI_SUCCESS) length = 0;
  throw Error(StrCat(call, " failed at ", file, ":", line, " on rank ", context.rank, " (host ",
                     context.host,
                     "): ", length > 0 ? std::string(message, length) : StrCat("MPI error ", rc)));
}

MpiWorld FormMpiWorld(control::ControlClient* client, int rank, int world_size,
                      const MpiWorldOptions& options, const MpiContext& context) {
  TERRA_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "MpiCommunicator: rank ", rank,
              " is not in a world of ", world_size);
  bool singleton = std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr;
  MpiWorld world;
  InitMpi(world_size, singleton, &world, context);
  MPI_Comm comm = MPI_COMM_NULL;
  if (singleton) {
    comm = GrowFromSingletons(client, rank, world_size, options, context);
  } else {
    TERRA_MPI_CHECK(context, MPI_Comm_dup(MPI_COMM_WORLD, &comm));
  }
  TERRA_MPI_CHECK(context, MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
  world.comm = OrderByTerraRank(comm, rank, world_size, context);
  TERRA_MPI_CHECK(context, MPI_Comm_set_errhandler(world.comm, MPI_ERRORS_RETURN));
  return world;
}

std::optional<MPI_Datatype> NativeMpiType(DataType dtype) {
  switch (dtype) {
    case DataType::kFloat32: return MPI_FLOAT;
    case DataType::kFloat64: return MPI_DOUBLE;
    case DataType::kInt32: return MPI_INT32_T;
    case DataType::kInt64: return MPI_INT64_T;
    case DataType::kUInt8: return MPI_UINT8_T;
    case DataType::kInt8: return MPI_INT8_T;
    case DataType::kFloat16:
    case DataType::kBFloat16: return std::nullopt;
  }
  return std::nullopt;
}

void CloseMpiWorld(MpiWorld* world, const MpiContext& context) {
  if (world->comm != MPI_COMM_NULL) TERRA_MPI_CHECK(context, MPI_Comm_free(&world->comm));
  if (world->finalize) {
    world->finalize = false;
    TERRA_MPI_CHECK(context, MPI_Finalize());
  }
}

}  // namespace terra::comm
