// reduce_scatter: rank r's output is block r of the reduction of all
// inputs. Each rank sends the n-1 partial blocks others own: (n-1)/n of the
// input.
#include "comm/bench/collective.h"

namespace terra::comm::bench {
namespace {

class ReduceScatter final : public BenchCollective {
 public:
  CollectiveKind kind() const override { return CollectiveKind::kReduceScatter; }
  bool reduces() const override { return true; }
  bool has_root() const override { return false; }

  Shape ShapeFor(size_t count, DataType dtype, int world_size) const override {
    size_t block = count / world_size;
    return {block * world_size * DataTypeSize(dtype), block * world_size, block};
  }

  double BusFactor(int world_size) const override {
    return static_cast<double>(world_size - 1) / world_size;
  }

  void Fill(const DataPattern& pattern, const CollectiveParams& params, const Shape& shape,
            void* input, void* output) const override {
    pattern.FillInput(input, shape.input_count, 0, params.rank);
    pattern.FillPoison(output, shape.output_count);
  }

  size_t CountWrong(const DataPattern& pattern, const CollectiveParams& params, const Shape& shape,
                    const void* input, const void* output) const override {
    size_t first = params.rank * shape.output_count;
    return CountMismatches(output, params.dtype, shape.output_count,
                           [&](size_t i) { return pattern.Reduced(params.op, first + i); });
  }

  std::shared_ptr<Work> Submit(Communicator& comm, const CollectiveParams& params, Buffer input,
                               Buffer output) const override {
    return comm.ReduceScatter(input, output, {.op = params.op});
  }
};

}  // namespace

std::unique_ptr<BenchCollective> MakeReduceScatter() { return std::make_unique<ReduceScatter>(); }

}  // namespace terra::comm::bench
