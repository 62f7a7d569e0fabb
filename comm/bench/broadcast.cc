// broadcast: in place, every rank ends with the root's buffer. In a pipelined
// ring each rank receives (and forwards) the whole buffer once: factor 1.
#include "comm/bench/collective.h"

namespace terra::comm::bench {
namespace {

class Broadcast final : public BenchCollective {
 public:
  CollectiveKind kind() const override { return CollectiveKind::kBroadcast; }
  bool reduces() const override { return false; }
  bool has_root() const override { return true; }

  Shape ShapeFor(size_t count, DataType dtype, int world_size) const override {
    return {count * DataTypeSize(dtype), count, 0};
  }

  double BusFactor(int world_size) const override { return 1.0; }

  // Ranks other than the root start from the poison, so an element left
  // unwritten is counted wrong.
  void Fill(const DataPattern& pattern, const CollectiveParams& params, const Shape& shape,
            void* input, void* output) const override {
    if (params.rank == params.root) {
      pattern.FillInput(input, shape.input_count, 0, params.root);
    } else {
      pattern.FillPoison(input, shape.input_count);
    }
  }

  size_t CountWrong(const DataPattern& pattern, const CollectiveParams& params, const Shape& shape,
                    const void* input, const void* output) const override {
    return CountMismatches(input, params.dtype, shape.input_count,
                           [&](size_t i) { return pattern.Input(params.root, i); });
  }

  std::shared_ptr<Work> Submit(Communicator& comm, const CollectiveParams& params, Buffer input,
                               Buffer output) const override {
    return comm.Broadcast(input, {.root = params.root});
  }
};

}  // namespace

std::unique_ptr<BenchCollective> MakeBroadcast() { return std::make_unique<Broadcast>(); }

}  // namespace terra::comm::bench
