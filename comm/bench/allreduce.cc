// allreduce: in place, every rank ends with the reduction of all inputs.
// Each rank sends and receives 2(n-1)/n of the buffer in a ring
// (reduce-scatter then allgather).
#include "comm/bench/collective.h"

namespace terra::comm::bench {
namespace {

class Allreduce final : public BenchCollective {
 public:
  CollectiveKind kind() const override { return CollectiveKind::kAllreduce; }
  bool reduces() const override { return true; }
  bool has_root() const override { return false; }

  Shape ShapeFor(size_t count, DataType dtype, int world_size) const override {
    return {count * DataTypeSize(dtype), count, 0};
  }

  double BusFactor(int world_size) const override { return 2.0 * (world_size - 1) / world_size; }

  void Fill(const DataPattern& pattern, const CollectiveParams& params, const Shape& shape,
            void* input, void* output) const override {
    pattern.FillInput(input, shape.input_count, 0, params.rank);
  }

  size_t CountWrong(const DataPattern& pattern, const CollectiveParams& params, const Shape& shape,
                    const void* input, const void* output) const override {
    return CountMismatches(input, params.dtype, shape.input_count,
                           [&](size_t i) { return pattern.Reduced(params.op, i); });
  }

  std::shared_ptr<Work> Submit(Communicator& comm, const CollectiveParams& params, Buffer input,
                               Buffer output) const override {
    return comm.Allreduce(input, {.op = params.op});
  }
};

}  // namespace

std::unique_ptr<BenchCollective> MakeAllreduce() { return std::make_unique<Allreduce>(); }

}  // namespace terra::comm::bench
