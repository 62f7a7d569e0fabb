// allgather: block r of every rank's output is rank r's input. Each rank
// receives the n-1 blocks it lacks: (n-1)/n of the output.
#include "comm/bench/collective.h"

namespace terra::comm::bench {
namespace {

class Allgather final : public BenchCollective {
 public:
  CollectiveKind kind() const override { return CollectiveKind::kAllgather; }
  bool reduces() const override { return false; }
  bool has_root() const override { return false; }

  Shape ShapeFor(size_t count, DataType dtype, int world_size) const override {
    size_t block = count / world_size;
    return {block * world_size * DataTypeSize(dtype), block, block * world_size};
  }

  double BusFactor(int world_size) const override {
    return static_cast<double>(world_size - 1) / world_size;
  }

  // Rank r's input is elements [r * block, (r + 1) * block) of one global
  // array, so the gathered output is that whole array.
  void Fill(const DataPattern& pattern, const CollectiveParams& params, const Shape& shape,
            void* input, void* output) const override {
    pattern.FillInput(input, shape.input_count, params.rank * shape.input_count, params.rank);
    pattern.FillPoison(output, shape.output_count);
  }

  size_t CountWrong(const DataPattern& pattern, const CollectiveParams& params, const Shape& shape,
                    const void* input, const void* output) const override {
    size_t block = shape.input_count;
    return CountMismatches(output, params.dtype, shape.output_count,
                           [&](size_t i) { return pattern.Input(static_cast<int>(i / block), i); });
  }

  std::shared_ptr<Work> Submit(Communicator& comm, const CollectiveParams& params, Buffer input,
                               Buffer output) const override {
    return comm.Allgather(input, output, {});
  }
};

}  // namespace

std::unique_ptr<BenchCollective> MakeAllgather() { return std::make_unique<Allgather>(); }

}  // namespace terra::comm::bench
