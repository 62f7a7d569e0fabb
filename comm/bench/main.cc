// terra-bench-collectives: see UsageText (options.cc) and docs/comm.md.
//
// Exit status: 0 when every collective ran (and, with --check, every element
// was right); 1 for wrong elements or a failed collective; 2 for bad
// arguments or a program not started by terrarun.
#include <unistd.h>

#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/bench/backend.h"
#include "comm/bench/harness.h"
#include "comm/bench/options.h"
#include "comm/bench/report.h"
#include "comm/control/environment.h"

namespace terra::comm::bench {
namespace {

std::string HostName() {
  char name[256] = {};
  ::gethostname(name, sizeof(name) - 1);
  return name;
}

// Everything after parsing; the process's exit status.
int Run(const BenchOptions& options, const control::JobEnvironment& job) {
  if (options.root >= job.world_size) {
    throw UsageError(StrCat("--root: rank ", options.root, " is not in this job of ",
                            job.world_size, " ranks; give a root below ", job.world_size));
  }
  control::Heartbeat heartbeat(job.client, job.heartbeat_interval);
  control::ControlClient client(job.client);
  Backend backend = CreateBackend(options, job, &client);
  bool is_root = job.rank == 0;
  std::ostream* log = is_root ? &std::cout : nullptr;
  RunEnvironment env{job.world_size, HostName(), backend.comm->backend(),
                     options.device == DeviceType::kCuda ? "cuda" : "cpu"};
  if (log) PrintPreamble(*log, options, env);

  std::vector<Row> rows;
  for (CollectiveKind kind : options.collectives) {
    std::vector<Row> more = RunCollective(backend, options, *MakeCollective(kind), log);
    rows.insert(rows.end(), more.begin(), more.end());
  }
  if (log) PrintSummary(*log, options, rows);
  if (is_root && !options.json_path.empty()) WriteJson(options.json_path, options, env, rows);
  for (const Row& row : rows) {
    if (row.wrong.value_or(0) != 0) return 1;
  }
  return 0;
}

}  // namespace
}  // namespace terra::comm::bench

int main(int argc, char** argv) {
  using namespace terra::comm::bench;
  constexpr const char* kName = "terra-bench-collectives: ";
  int rank = -1;
  try {
    BenchOptions options = ParseOptions(std::vector<std::string>(argv + 1, argv + argc));
    if (options.help) {
      std::cout << UsageText();
      return 0;
    }
    std::optional<terra::comm::control::JobEnvironment> job =
        terra::comm::control::JobFromEnvironment();
    if (!job) {
      std::cerr << kName
                << "not started by terrarun (TERRA_JOB_SECRET is unset); run it as "
                   "`terrarun -np 2 terra-bench-collectives ...`\n";
      return 2;
    }
    rank = job->rank;
    return Run(options, *job);
  } catch (const UsageError& e) {
    std::cerr << kName << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << kName << (rank >= 0 ? "rank " + std::to_string(rank) + ": " : "") << e.what()
              << "\n";
    return 1;
  }
}
