// Helpers for the comm tests: buffers of any DataType filled from doubles,
// and the expected results of reductions computed independently of
// comm/reduce.h.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "comm/types.h"
#include "comm/work.h"
#include "runtime/base/check.h"

namespace terra::comm::testing {

inline constexpr DataType kAllDataTypes[] = {
    DataType::kFloat32, DataType::kFloat64, DataType::kFloat16, DataType::kBFloat16,
    DataType::kInt32,   DataType::kInt64,   DataType::kUInt8,   DataType::kInt8};
inline constexpr ReduceOp kAllReduceOps[] = {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax,
                                             ReduceOp::kMin};

// Expects `work`, submitted to a broken communicator, to fail at once with an
// Error that says "broken" (communicator.h), not to time out.
inline void ExpectRefusedAsBroken(const Work& work) {
  try {
    work.Wait(std::chrono::milliseconds(1000));
    ADD_FAILURE() << "expected the broken communicator to refuse";
  } catch (const TimeoutError& e) {
    ADD_FAILURE() << "a broken communicator fails at once: " << e.what();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("broken"), std::string::npos) << e.what();
  }
}

// Typed storage behind a Buffer.
class HostBuffer {
 public:
  HostBuffer(DataType dtype, const std::vector<double>& values)
      : dtype_(dtype), count_(values.size()), bytes_(values.size() * DataTypeSize(dtype)) {
    for (size_t i = 0; i < count_; ++i) Set(i, values[i]);
  }
  HostBuffer(DataType dtype, size_t count) : HostBuffer(dtype, std::vector<double>(count, 0.0)) {}

  Buffer buffer() { return Buffer{bytes_.data(), count_, dtype_, Device{}}; }
  // A view of elements [offset, offset + count).
  Buffer slice(size_t offset, size_t count) {
    return Buffer{bytes_.data() + offset * DataTypeSize(dtype_), count, dtype_, Device{}};
  }
  size_t count() const { return count_; }

  double Get(size_t i) const {
    const char* p = bytes_.data() + i * DataTypeSize(dtype_);
    switch (dtype_) {
      case DataType::kFloat32:
        return Load<float>(p);
      case DataType::kFloat64:
        return Load<double>(p);
      case DataType::kFloat16:
        return HalfToFloat(Load<uint16_t>(p));
      case DataType::kBFloat16:
        return BFloat16ToFloat(Load<uint16_t>(p));
      case DataType::kInt32:
        return Load<int32_t>(p);
      case DataType::kInt64:
        return static_cast<double>(Load<int64_t>(p));
      case DataType::kUInt8:
        return Load<uint8_t>(p);
      case DataType::kInt8:
        return Load<int8_t>(p);
    }
    return 0;
  }

  void Set(size_t i, double v) {
    char* p = bytes_.data() + i * DataTypeSize(dtype_);
    switch (dtype_) {
      case DataType::kFloat32:
        return Store<float>(p, static_cast<float>(v));
      case DataType::kFloat64:
        return Store<double>(p, v);
      case DataType::kFloat16:
        return Store<uint16_t>(p, FloatToHalf(static_cast<float>(v)));
      case DataType::kBFloat16:
        return Store<uint16_t>(p, FloatToBFloat16(static_cast<float>(v)));
      case DataType::kInt32:
        return Store<int32_t>(p, static_cast<int32_t>(v));
      case DataType::kInt64:
        return Store<int64_t>(p, static_cast<int64_t>(v));
      case DataType::kUInt8:
        return Store<uint8_t>(p, static_cast<uint8_t>(v));
      case DataType::kInt8:
        return Store<int8_t>(p, static_cast<int8_t>(v));
    }
  }

 private:
  template <typename T>
  static T Load(const char* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
  }
  template <typename T>
  static void Store(char* p, T v) {
    std::memcpy(p, &v, sizeof(T));
  }

  DataType dtype_;
  size_t count_;
  std::vector<char> bytes_;
};

// Small integers, uneven across ranks and elements, exact in every dtype;
// negative ones only for signed types.
inline double Value(DataType dtype, int rank, size_t i) {
  double v = static_cast<double>((rank * 7 + static_cast<int>(i) * 3) % 11);
  return dtype == DataType::kUInt8 ? v : v - 5.0;
}

inline std::vector<double> Values(DataType dtype, int rank, size_t count) {
  std::vector<double> values(count);
  for (size_t i = 0; i < count; ++i) values[i] = Value(dtype, rank, i);
  return values;
}

// The reduction of Value(dtype, r, i) over ranks 0..world_size-1, as stored in dtype.
inline double Expected(DataType dtype, ReduceOp op, int world_size, size_t i) {
  double sum = 0, max = -1e300, min = 1e300;
  for (int r = 0; r < world_size; ++r) {
    double v = Value(dtype, r, i);
    sum += v;
    max = std::max(max, v);
    min = std::min(min, v);
  }
  double result = sum;
  if (op == ReduceOp::kMax) result = max;
  if (op == ReduceOp::kMin) result = min;
  if (op == ReduceOp::kAvg)
    result = IsFloatingPoint(dtype) ? sum / world_size : std::floor(sum / world_size);
  HostBuffer rounded(dtype, std::vector<double>{result});
  return rounded.Get(0);
}

}  // namespace terra::comm::testing
