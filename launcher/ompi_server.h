// OmpiServer: Open MPI's ompi-server, run beside a local job so that the
// ranks' MPI singletons can find each other (comm/mpi_world.h explains why
// ranks started by terrarun, not by mpirun, need it).
//
// It is a helper process, not a rank: the Supervisor does not watch it, its
// output is not prefixed, and its death does not fail the job (a rank that
// then needs MPI fails with a message of its own). It lives in its own process
// group with PR_SET_PDEATHSIG, so it dies with terrarun, and is stopped
// (SIGTERM, then SIGKILL) when the OmpiServer is destroyed, after the ranks.
// terrarun never links MPI: it only runs the ompi-server executable.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "launcher/settings.h"

namespace terra::launcher {

class OmpiServer {
 public:
  // For a local job of more than one rank: starts `ompi-server
  // --no-daemonize -r <uri file>` if it is on PATH and waits (at most 5 s)
  // for its URI file. Returns nullptr, never throws, when there is no need,
  // no ompi-server, or it did not come up (with a warning): programs that do
  // not use MPI run as before.
  static std::unique_ptr<OmpiServer> StartForJob(const LaunchSettings& settings);

  ~OmpiServer();
  OmpiServer(const OmpiServer&) = delete;
  OmpiServer& operator=(const OmpiServer&) = delete;

  // The file ompi-server wrote its URI to; ranks get "file:<it>".
  const std::string& uri_file() const { return uri_file_; }

 private:
  OmpiServer(pid_t pid, std::string directory);

  pid_t pid_;
  std::string directory_;
  std::string uri_file_;
};

// Adds what Open MPI needs in a local job's rank environment, keeping any of
// these the user set: OMPI_MCA_pmix_server_uri=file:<uri file> (when server
// is not null), TCP on the loopback interface only, and permission to run as
// root (CI containers run as root).
void AddOpenMpiEnvironment(const OmpiServer* server, std::vector<std::string>* env);

}  // namespace terra::launcher
