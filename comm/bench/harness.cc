#include "comm/bench/harness.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "comm/bench/raw_mpi.h"
#include "comm/bench/report.h"

namespace terra::comm::bench {
namespace {

using Clock = std::chrono::steady_clock;

// `values` reduced element-wise by `op` over all ranks, through the
// communicator under test (float64: exact for the counts we sum).
std::vector<double> AllreduceValues(Backend& backend, std::vector<double> values, ReduceOp op) {
  size_t bytes = values.size() * sizeof(double);
  std::shared_ptr<void> device = backend.memory->Allocate(bytes);
  backend.memory->CopyToDevice(device.get(), values.data(), bytes);
  Buffer buffer{device.get(), values.size(), DataType::kFloat64, backend.memory->device()};
  backend.comm->Allreduce(buffer, {.op = op})->Wait();
  backend.memory->CopyToHost(values.data(), device.get(), bytes);
  return values;
}

// Buffers of the largest size, reused by every size (a prefix of each).
struct Buffers {
  std::shared_ptr<void> input;
  std::shared_ptr<void> output;
  std::vector<char> host_input;
  std::vector<char> host_output;
};

Buffers AllocateFor(Backend& backend, const BenchOptions& options,
                    const BenchCollective& collective, int world_size) {
  size_t max_count = options.max_bytes / DataTypeSize(options.dtype);
  Shape shape = collective.ShapeFor(max_count, options.dtype, world_size);
  size_t size = DataTypeSize(options.dtype);
  Buffers buffers;
  buffers.input = backend.memory->Allocate(std::max<size_t>(shape.input_count * size, 1));
  buffers.output = backend.memory->Allocate(std::max<size_t>(shape.output_count * size, 1));
  buffers.host_input.resize(shape.input_count * size);
  buffers.host_output.resize(shape.output_count * size);
  return buffers;
}

// Steps 1 and 2 of harness.h: this rank's count of wrong result elements.
int64_t FillAndCheck(Backend& backend, const BenchOptions& options,
                     const BenchCollective& collective, const CollectiveParams& params,
                     const Shape& shape, Buffers& buffers) {
  DataPattern pattern(params.dtype, params.world_size);
  size_t in_bytes = shape.input_count * DataTypeSize(params.dtype);
  size_t out_bytes = shape.output_count * DataTypeSize(params.dtype);
  void* host_output = out_bytes > 0 ? buffers.host_output.data() : nullptr;
  collective.Fill(pattern, params, shape, buffers.host_input.data(), host_output);
  BenchMemory& memory = *backend.memory;
  memory.CopyToDevice(buffers.input.get(), buffers.host_input.data(), in_bytes);
  if (out_bytes > 0) memory.CopyToDevice(buffers.output.get(), host_output, out_bytes);
  if (!options.check) return 0;

  Device device = memory.device();
  Buffer input{buffers.input.get(), shape.input_count, params.dtype, device};
  Buffer output{buffers.output.get(), shape.output_count, params.dtype, device};
  collective.Submit(*backend.comm, params, input, output)->Wait();
  memory.CopyToHost(buffers.host_input.data(), buffers.input.get(), in_bytes);
  if (out_bytes > 0) memory.CopyToHost(host_output, buffers.output.get(), out_bytes);
  if (options.inject_error && params.rank == std::min(1, params.world_size - 1)) {
    void* result = out_bytes > 0 ? host_output : buffers.host_input.data();
    StoreElement(result, params.dtype, 0, pattern.poison());
  }
  return static_cast<int64_t>(
      collective.CountWrong(pattern, params, shape, buffers.host_input.data(), host_output));
}

// Steps 3 and 4 of harness.h: this rank's mean time in microseconds.
double TimeCollective(Backend& backend, const BenchOptions& options,
                      const BenchCollective& collective, const CollectiveParams& params,
                      Buffer input, Buffer output) {
  Communicator& comm = *backend.comm;
  for (int i = 0; i < options.warmup; ++i) collective.Submit(comm, params, input, output)->Wait();
  comm.Barrier({})->Wait();
  auto start = Clock::now();
  for (int i = 0; i < options.iterations; ++i) {
    collective.Submit(comm, params, input, output)->Wait();
  }
  std::chrono::duration<double, std::micro> elapsed = Clock::now() - start;
  return elapsed.count() / options.iterations;
}

}  // namespace

std::vector<Row> RunCollective(Backend& backend, const BenchOptions& options,
                               const BenchCollective& collective, std::ostream* log) {
  CollectiveParams params{options.dtype, options.op, options.root, backend.comm->rank(),
                          backend.comm->size()};
  bool raw = options.raw_mpi && backend.mpi != nullptr &&
             collective.kind() == CollectiveKind::kAllreduce &&
             HasRawMpiAllreduce(options.dtype, options.op);
  Buffers buffers = AllocateFor(backend, options, collective, params.world_size);
  if (log) PrintTableHeader(*log, collective, raw);

  std::vector<Row> rows;
  for (size_t bytes : SizeSteps(options)) {
    size_t count = bytes / DataTypeSize(options.dtype);
    Shape shape = collective.ShapeFor(count, options.dtype, params.world_size);
    if (shape.input_count == 0) {
      if (log) *log << "# " << bytes << " B skipped: less than one element per rank\n";
      continue;
    }
    int64_t wrong = FillAndCheck(backend, options, collective, params, shape, buffers);
    Device device = backend.memory->device();
    Buffer input{buffers.input.get(), shape.input_count, params.dtype, device};
    Buffer output{buffers.output.get(), shape.output_count, params.dtype, device};
    double time_us = TimeCollective(backend, options, collective, params, input, output);
    bool raw_here = raw && shape.input_count <= static_cast<size_t>(INT32_MAX);  // MPI's int count
    double raw_us = raw_here ? TimeRawMpiAllreduce(*backend.mpi, input, options.op, options.warmup,
                                                   options.iterations)
                             : 0.0;
    std::vector<double> slowest = AllreduceValues(backend, {time_us, raw_us}, ReduceOp::kMax);
    std::vector<double> total = AllreduceValues(backend, {double(wrong)}, ReduceOp::kSum);

    Row row;
    row.collective = collective.kind();
    row.bytes = shape.bytes;
    row.count = shape.bytes / DataTypeSize(options.dtype);
    row.dtype = options.dtype;
    if (collective.reduces()) row.op = options.op;
    if (collective.has_root()) row.root = options.root;
    row.time_us = slowest[0];
    row.algbw = static_cast<double>(shape.bytes) / (row.time_us * 1e3);  // bytes/us -> GB/s
    row.busbw = row.algbw * collective.BusFactor(params.world_size);
    if (options.check) row.wrong = static_cast<int64_t>(total[0]);
    if (raw_here) {
      row.raw_time_us = slowest[1];
      row.raw_busbw = static_cast<double>(shape.bytes) / (slowest[1] * 1e3) *
                      collective.BusFactor(params.world_size);
    }
    if (log) PrintTableRow(*log, row);
    rows.push_back(row);
  }
  return rows;
}

}  // namespace terra::comm::bench
