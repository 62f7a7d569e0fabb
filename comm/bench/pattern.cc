#include "comm/bench/pattern.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "runtime/base/check.h"

namespace terra::comm::bench {
namespace {

// The largest integer n such that every integer in [0, n] is exact in `dtype`
// (and fits a signed type's positive range).
int64_t ExactLimit(DataType dtype) {
  switch (dtype) {
    case DataType::kFloat16:
      return 2048;
    case DataType::kBFloat16:
      return 256;
    case DataType::kInt8:
      return 127;
    case DataType::kUInt8:
      return 255;
    case DataType::kFloat32:
      return int64_t{1} << 24;
    default:
      return int64_t{1} << 30;
  }
}

template <typename T>
T Load(const void* data, size_t i) {
  T value;
  std::memcpy(&value, static_cast<const char*>(data) + i * sizeof(T), sizeof(T));
  return value;
}

template <typename T>
void Store(void* data, size_t i, T value) {
  std::memcpy(static_cast<char*>(data) + i * sizeof(T), &value, sizeof(T));
}

}  // namespace

DataPattern::DataPattern(DataType dtype, int world_size) : dtype_(dtype), world_size_(world_size) {
  TERRA_INTERNAL_CHECK(world_size >= 1);
  // Sums of world_size inputs stay below the limit; the poison (== modulus)
  // must be exact too. Past ~ExactLimit ranks every input is 0: still checks
  // that data arrives, no longer which rank's it is.
  modulus_ = static_cast<int>(std::clamp<int64_t>(ExactLimit(dtype) / world_size, 1, 101));
}

double DataPattern::Input(int rank, size_t index) const {
  return static_cast<double>((index * 31 + static_cast<size_t>(rank) * 17 + 3) %
                             static_cast<size_t>(modulus_));
}

double DataPattern::Reduced(ReduceOp op, size_t index) const {
  double result = Input(0, index);
  for (int r = 1; r < world_size_; ++r) {
    double value = Input(r, index);
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg:
        result += value;
        break;
      case ReduceOp::kMax:
        result = std::max(result, value);
        break;
      case ReduceOp::kMin:
        result = std::min(result, value);
        break;
    }
  }
  if (op != ReduceOp::kAvg) return result;
  switch (dtype_) {
    case DataType::kFloat64:
      return result / world_size_;
    case DataType::kFloat32:
    case DataType::kFloat16:
    case DataType::kBFloat16:  // divided in float32, then rounded once more
      return RoundTo(dtype_, static_cast<float>(result) / static_cast<float>(world_size_));
    default: {  // floor division; the sum is non-negative
      int64_t quotient = static_cast<int64_t>(result) / world_size_;
      return static_cast<double>(quotient);
    }
  }
}

void DataPattern::FillInput(void* data, size_t count, size_t first_index, int rank) const {
  for (size_t i = 0; i < count; ++i) StoreElement(data, dtype_, i, Input(rank, first_index + i));
}

void DataPattern::FillPoison(void* data, size_t count) const {
  for (size_t i = 0; i < count; ++i) StoreElement(data, dtype_, i, poison());
}

double LoadElement(const void* data, DataType dtype, size_t i) {
  switch (dtype) {
    case DataType::kFloat32:
      return Load<float>(data, i);
    case DataType::kFloat64:
      return Load<double>(data, i);
    case DataType::kFloat16:
      return HalfToFloat(Load<uint16_t>(data, i));
    case DataType::kBFloat16:
      return BFloat16ToFloat(Load<uint16_t>(data, i));
    case DataType::kInt32:
      return Load<int32_t>(data, i);
    case DataType::kInt64:
      return static_cast<double>(Load<int64_t>(data, i));
    case DataType::kUInt8:
      return Load<uint8_t>(data, i);
    case DataType::kInt8:
      return Load<int8_t>(data, i);
  }
  TERRA_INTERNAL_CHECK(false, "unknown DataType ", static_cast<int>(dtype));
}

void StoreElement(void* data, DataType dtype, size_t i, double value) {
  switch (dtype) {
    case DataType::kFloat32:
      return Store(data, i, static_cast<float>(value));
    case DataType::kFloat64:
      return Store(data, i, value);
    case DataType::kFloat16:
      return Store(data, i, FloatToHalf(static_cast<float>(value)));
    case DataType::kBFloat16:
      return Store(data, i, FloatToBFloat16(static_cast<float>(value)));
    case DataType::kInt32:
      return Store(data, i, static_cast<int32_t>(value));
    case DataType::kInt64:
      return Store(data, i, static_cast<int64_t>(value));
    case DataType::kUInt8:
      return Store(data, i, static_cast<uint8_t>(value));
    case DataType::kInt8:
      return Store(data, i, static_cast<int8_t>(value));
  }
  TERRA_INTERNAL_CHECK(false, "unknown DataType ", static_cast<int>(dtype));
}

double RoundTo(DataType dtype, double value) {
  char storage[8];
  StoreElement(storage, dtype, 0, value);
  return LoadElement(storage, dtype, 0);
}

}  // namespace terra::comm::bench
