// The torch-free types of tracing: where an op came from (LocationSource),
// what the recorder counted (RecorderStats, SyncSummary). Shared by the
// recorder (runtime/recorder.h, which links ATen) and the report
// (runtime/tracing_report.h, which does not).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph/node.h"

namespace terra::runtime {

// Where in the program the calling thread is.
class LocationSource {
 public:
  virtual ~LocationSource() = default;
  // Replaces *frames with the calling thread's Python frames, outermost
  // first. Called for every forward op on the op's thread, possibly without
  // the GIL: keep it cheap and reuse the vector's capacity.
  virtual void CurrentFrames(std::vector<graph::Frame>* frames) = 0;
  // A short human description of where `frames` are in the program's own
  // code, e.g. "train.py:42 in step", for reports. Called from the thread
  // that asks for a report.
  virtual std::string Describe(const std::vector<graph::Frame>& frames) = 0;
};

// New node variants (other input shapes, dtypes or strides) one program
// location may add after the first traced iteration before co-execution stops
// trying to match it there (design.md §5). Variants present from the first
// iteration on (a loop over parameters of different shapes) do not count.
inline constexpr size_t kMaxShapeVariants = 8;

struct RecorderStats {
  uint64_t iterations = 0;              // traces merged
  uint64_t ops = 0;                     // ops recorded, all iterations, current one included
  uint64_t syncs = 0;                   // sync points recorded, all iterations
  std::vector<uint32_t> ops_per_iteration;  // one entry per merged trace (the last 1024)
  uint32_t ops_in_current = 0;          // ops recorded since the last EndIteration
  uint64_t prologue_ops = 0;            // ops in traces dropped by EndIteration(false)
  uint64_t overflows = 0;               // iterations dropped for passing the op limit
  uint64_t max_new_variants = 0;        // most variants one location added after the first iteration
  uint64_t locations_over_bound = 0;    // locations that added more than kMaxShapeVariants
};

// A sync point aggregated over iterations, for reports.
struct SyncSummary {
  graph::Location location;
  std::string op;  // "aten::_local_scalar_dense" or the Python entry point ("numpy", "print", ...)
  uint64_t count = 0;
};

}  // namespace terra::runtime
