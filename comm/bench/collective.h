// BenchCollective: one collective as the harness (harness.h) times it. Each
// collective lives in its own file (allreduce.cc, allgather.cc, ...) and
// supplies its buffer shapes, its bus-bandwidth factor, its input and its
// exact expected result; the harness does everything else.
//
// Sizes follow nccl-tests: a size is the larger of the two buffers in bytes
// (allreduce and broadcast: the one buffer; allgather: the output;
// reduce_scatter: the input).
//
// Bandwidths (nccl-tests doc/PERFORMANCE.md): algbw = size / time. busbw =
// algbw * BusFactor(n): the bytes each rank's link must carry in an optimal
// ring algorithm, relative to size, so that busbw is comparable across
// collectives and rank counts and with the hardware's link bandwidth.
#pragma once

#include <cstddef>
#include <memory>

#include "comm/bench/options.h"
#include "comm/bench/pattern.h"
#include "comm/communicator.h"

namespace terra::comm::bench {

// What a collective needs to know for one run, beyond the buffers.
struct CollectiveParams {
  DataType dtype = DataType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
  int root = 0;
  int rank = 0;
  int world_size = 1;
};

struct Shape {
  size_t bytes = 0;         // nccl-tests' size: the larger buffer
  size_t input_count = 0;   // elements; 0 when the size is too small to run
  size_t output_count = 0;  // 0 for in-place collectives: the result overwrites the input
};

class BenchCollective {
 public:
  virtual ~BenchCollective() = default;

  virtual CollectiveKind kind() const = 0;
  virtual bool reduces() const = 0;   // takes --reduce
  virtual bool has_root() const = 0;  // takes --root

  // Buffers for `count` elements (size / sizeof(dtype)), rounded down to a
  // multiple of world_size where the collective splits the buffer.
  virtual Shape ShapeFor(size_t count, DataType dtype, int world_size) const = 0;

  virtual double BusFactor(int world_size) const = 0;

  // Writes this rank's input into `input` and poisons `output` (null for
  // in-place collectives); both are host memory of the shape's counts.
  virtual void Fill(const DataPattern& pattern, const CollectiveParams& params, const Shape& shape,
                    void* input, void* output) const = 0;

  // Elements of this rank's result (in `input` for in-place collectives)
  // that differ from the exact expected value.
  virtual size_t CountWrong(const DataPattern& pattern, const CollectiveParams& params,
                            const Shape& shape, const void* input, const void* output) const = 0;

  // Submits the collective on device buffers of the shape's counts.
  virtual std::shared_ptr<Work> Submit(Communicator& comm, const CollectiveParams& params,
                                       Buffer input, Buffer output) const = 0;
};

std::unique_ptr<BenchCollective> MakeAllreduce();
std::unique_ptr<BenchCollective> MakeAllgather();
std::unique_ptr<BenchCollective> MakeReduceScatter();
std::unique_ptr<BenchCollective> MakeBroadcast();
std::unique_ptr<BenchCollective> MakeCollective(CollectiveKind kind);

// Counts i < count with LoadElement(data, i) != expected(i) (a callable).
template <typename Expected>
size_t CountMismatches(const void* data, DataType dtype, size_t count, Expected expected) {
  size_t wrong = 0;
  for (size_t i = 0; i < count; ++i) wrong += LoadElement(data, dtype, i) != expected(i);
  return wrong;
}

}  // namespace terra::comm::bench
