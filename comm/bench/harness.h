// The timing loop shared by every collective.
//
// For each size, every rank, in the same order:
//  1. fills its input from DataPattern (and poisons its output);
//  2. with --check: runs the collective once, copies the result to the host
//     and counts the elements that differ from the exact expected value;
//  3. runs --warmup untimed collectives;
//  4. Barrier (through the communicator under test), then times --iters
//     back-to-back collectives, each waited before the next is submitted
//     (nccl-tests' default blocking mode): time = wall time / iters;
//  5. allreduce only, on the MPI backend, unless --no-raw-mpi: the same
//     warm-up, MPI_Barrier and loop with plain MPI_Allreduce (raw_mpi.h);
//  6. reduces the times with an allreduce max (the slowest rank's time is
//     the collective's time) and the wrong counts with an allreduce sum.
// Later steps run on whatever earlier steps left in the buffers: the timed
// collectives see data of the same size and type, not the pattern.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <vector>

#include "comm/bench/backend.h"
#include "comm/bench/collective.h"
#include "comm/bench/options.h"

namespace terra::comm::bench {

struct Row {
  CollectiveKind collective = CollectiveKind::kAllreduce;
  size_t bytes = 0;  // nccl-tests' size (collective.h)
  size_t count = 0;  // bytes / sizeof(dtype)
  DataType dtype = DataType::kFloat32;
  std::optional<ReduceOp> op;         // reducing collectives only
  std::optional<int> root;            // rooted collectives only
  double time_us = 0;                 // the slowest rank's mean time per collective
  double algbw = 0;                   // GB/s (1e9 bytes per second)
  double busbw = 0;                   // algbw * BusFactor
  std::optional<int64_t> wrong;       // over all ranks; nullopt without --check
  std::optional<double> raw_time_us;  // plain MPI_Allreduce, slowest rank
  std::optional<double> raw_busbw;
};

// Runs `collective` at every size of SizeSteps(options). Collective: every
// rank calls it with the same options. Sizes too small for one element per
// rank are skipped (with a note on `log`). Each row is printed to `log` as it
// is measured, when `log` is not null (rank 0 passes std::cout).
std::vector<Row> RunCollective(Backend& backend, const BenchOptions& options,
                               const BenchCollective& collective, std::ostream* log);

}  // namespace terra::comm::bench
