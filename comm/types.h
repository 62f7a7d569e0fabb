// What a collective operates on: a view of memory the caller owns, described
// without Torch (comm/ never includes ATen; the Torch adapter that turns a
// tensor into a Buffer lives in runtime/).
//
// Ownership: a Buffer does not own its memory. The caller keeps it alive, and
// does not read or write it, until the Work of the collective that uses it
// has completed (work.h). A collective that failed or timed out may still
// write into its buffers later (MPI cannot cancel a collective).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace terra::comm {

enum class DataType { kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8, kInt8 };

// kAvg is kSum followed by a division by the number of ranks: exact IEEE
// division for floating point (float16 and bfloat16 divide in float32 and
// round to nearest even), floor division for integers (Python's //, so
// -3 avg 0 over two ranks is -2). The NCCL backend departs for floating
// point: it uses NCCL's ncclAvg, which multiplies each rank's input by 1/n
// rounded to the dtype and then sums (as PyTorch does), the same result when
// n is a power of two (short of subnormals and overflow), within the dtype's
// rounding otherwise; integers follow the floor rule (nccl_communicator.h).
enum class ReduceOp { kSum, kAvg, kMax, kMin };

enum class DeviceType { kCpu, kCuda };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = -1;  // CUDA ordinal; -1 for the CPU
};

struct Buffer {
  void* data = nullptr;
  size_t count = 0;  // elements, not bytes
  DataType dtype = DataType::kFloat32;
  Device device;

  size_t bytes() const;
};

size_t DataTypeSize(DataType dtype);
const char* DataTypeName(DataType dtype);  // "float32", "bfloat16", ...
bool IsFloatingPoint(DataType dtype);
const char* ReduceOpName(ReduceOp op);         // "sum", "avg", "max", "min"
std::string DeviceName(const Device& device);  // "cpu", "cuda:1"

// float <-> IEEE binary16 and bfloat16, round to nearest even; NaN stays NaN.
uint16_t FloatToHalf(float value);
float HalfToFloat(uint16_t bits);
uint16_t FloatToBFloat16(float value);
float BFloat16ToFloat(uint16_t bits);

}  // namespace terra::comm
