// What rank 0 prints and writes: the table (in the layout of nccl-tests,
// with the raw MPI columns for allreduce) and the JSON file.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "comm/bench/collective.h"
#include "comm/bench/harness.h"
#include "comm/bench/options.h"

namespace terra::comm::bench {

// Where the benchmark ran, for the table's preamble and the JSON.
struct RunEnvironment {
  int world_size = 0;
  std::string host;     // rank 0's hostname
  std::string backend;  // Communicator::backend(): "mpi", "nccl"
  std::string device;   // "cpu", "cuda"
};

void PrintPreamble(std::ostream& out, const BenchOptions& options, const RunEnvironment& env);
// `raw`: add the raw MPI_Allreduce columns.
void PrintTableHeader(std::ostream& out, const BenchCollective& collective, bool raw);
void PrintTableRow(std::ostream& out, const Row& row);
// Total wrong elements (with --check) and the mean busbw over the rows.
void PrintSummary(std::ostream& out, const BenchOptions& options, const std::vector<Row>& rows);

// One JSON object: {"benchmark", "settings", "environment", "rows",
// "wrong"}. Throws terra::Error naming the path when it cannot be written.
void WriteJson(const std::string& path, const BenchOptions& options, const RunEnvironment& env,
               const std::vector<Row>& rows);

}  // namespace terra::comm::bench
