// The settings of terra-bench-collectives, parsed from its command line in
// one place. The usage text (UsageText) lists every option.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "comm/collective.h"
#include "comm/types.h"
#include "runtime/base/check.h"

namespace terra::comm::bench {

struct BenchOptions {
  // comm's CollectiveKind, barrier excepted; named by CollectiveKindName.
  std::vector<CollectiveKind> collectives = {CollectiveKind::kAllreduce};  // in run order
  size_t min_bytes = 1024;
  size_t max_bytes = size_t{64} << 20;
  size_t factor = 4;  // sizes: min_bytes, min_bytes * factor, ... while <= max_bytes
  int warmup = 5;     // untimed collectives before each size's timed loop
  int iterations = 20;
  bool check = false;
  DataType dtype = DataType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
  int root = 0;  // checked against the world size once it is known
  DeviceType device = DeviceType::kCpu;
  std::string json_path;      // empty: no JSON
  bool raw_mpi = true;        // time MPI_Allreduce beside allreduce (MPI backend only)
  bool inject_error = false;  // hidden: corrupts one result element per size on rank 1
  bool help = false;
};

// A mistake on the command line; main prints it and exits with status 2.
class UsageError : public Error {
 public:
  using Error::Error;
};

// Parses the arguments after the program name. Throws UsageError naming the
// argument and what to give instead.
BenchOptions ParseOptions(const std::vector<std::string>& args);

// "64", "1K", "64M", "1G" (binary multiples; k, m, g too) into bytes. `flag`
// names the option in the UsageError.
size_t ParseSize(const std::string& flag, const std::string& text);

// The sizes from min_bytes to max_bytes, multiplying by factor.
std::vector<size_t> SizeSteps(const BenchOptions& options);

std::string UsageText();

}  // namespace terra::comm::bench
