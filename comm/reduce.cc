#include "comm/reduce.h"

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "runtime/base/check.h"

namespace terra::comm {
namespace {

template <typename T>
T Combine(T a, T b, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      if constexpr (std::is_integral_v<T>) {
        using U = std::make_unsigned_t<T>;
        return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
      } else {
        return a + b;
      }
    case ReduceOp::kMax:
      if constexpr (std::is_floating_point_v<T>) {
        if (std::isnan(a) || std::isnan(b)) return std::isnan(a) ? a : b;
      }
      return a < b ? b : a;
    case ReduceOp::kMin:
      if constexpr (std::is_floating_point_v<T>) {
        if (std::isnan(a) || std::isnan(b)) return std::isnan(a) ? a : b;
      }
      return b < a ? b : a;
  }
  return a;
}

template <typename T>
void ReduceTyped(void* accumulator, const void* operand, size_t count, ReduceOp op) {
  T* acc = static_cast<T*>(accumulator);
  const T* in = static_cast<const T*>(operand);
  for (size_t i = 0; i < count; ++i) acc[i] = Combine(acc[i], in[i], op);
}

template <float (*ToFloat)(uint16_t), uint16_t (*FromFloat)(float)>
void ReduceHalf(void* accumulator, const void* operand, size_t count, ReduceOp op) {
  uint16_t* acc = static_cast<uint16_t*>(accumulator);
  const uint16_t* in = static_cast<const uint16_t*>(operand);
  for (size_t i = 0; i < count; ++i)
    acc[i] = FromFloat(Combine(ToFloat(acc[i]), ToFloat(in[i]), op));
}

template <typename T>
T FloorDivide(T value, T divisor) {
  T quotient = value / divisor;
  if ((value % divisor != 0) && ((value < 0) != (divisor < 0))) --quotient;
  return quotient;
}

template <typename T>
void DivideTyped(void* data, size_t count, int divisor) {
  T* values = static_cast<T*>(data);
  for (size_t i = 0; i < count; ++i) {
    if constexpr (std::is_integral_v<T>) {
      values[i] = static_cast<T>(FloorDivide<int64_t>(values[i], divisor));
    } else {
      values[i] = values[i] / static_cast<T>(divisor);
    }
  }
}

template <float (*ToFloat)(uint16_t), uint16_t (*FromFloat)(float)>
void DivideHalf(void* data, size_t count, int divisor) {
  uint16_t* values = static_cast<uint16_t*>(data);
  for (size_t i = 0; i < count; ++i)
    values[i] = FromFloat(ToFloat(values[i]) / static_cast<float>(divisor));
}

}  // namespace

void ReduceInto(void* accumulator, const void* operand, size_t count, DataType dtype, ReduceOp op) {
  switch (dtype) {
    case DataType::kFloat32:
      return ReduceTyped<float>(accumulator, operand, count, op);
    case DataType::kFloat64:
      return ReduceTyped<double>(accumulator, operand, count, op);
    case DataType::kInt32:
      return ReduceTyped<int32_t>(accumulator, operand, count, op);
    case DataType::kInt64:
      return ReduceTyped<int64_t>(accumulator, operand, count, op);
    case DataType::kUInt8:
      return ReduceTyped<uint8_t>(accumulator, operand, count, op);
    case DataType::kInt8:
      return ReduceTyped<int8_t>(accumulator, operand, count, op);
    case DataType::kFloat16:
      return ReduceHalf<HalfToFloat, FloatToHalf>(accumulator, operand, count, op);
    case DataType::kBFloat16:
      return ReduceHalf<BFloat16ToFloat, FloatToBFloat16>(accumulator, operand, count, op);
  }
  TERRA_INTERNAL_CHECK(false, "unknown DataType ", static_cast<int>(dtype));
}

void DivideBy(void* data, size_t count, DataType dtype, int divisor) {
  TERRA_INTERNAL_CHECK(divisor > 0, "divisor ", divisor);
  switch (dtype) {
    case DataType::kFloat32:
      return DivideTyped<float>(data, count, divisor);
    case DataType::kFloat64:
      return DivideTyped<double>(data, count, divisor);
    case DataType::kInt32:
      return DivideTyped<int32_t>(data, count, divisor);
    case DataType::kInt64:
      return DivideTyped<int64_t>(data, count, divisor);
    case DataType::kUInt8:
      return DivideTyped<uint8_t>(data, count, divisor);
    case DataType::kInt8:
      return DivideTyped<int8_t>(data, count, divisor);
    case DataType::kFloat16:
      return DivideHalf<HalfToFloat, FloatToHalf>(data, count, divisor);
    case DataType::kBFloat16:
      return DivideHalf<BFloat16ToFloat, FloatToBFloat16>(data, count, divisor);
  }
  TERRA_INTERNAL_CHECK(false, "unknown DataType ", static_cast<int>(dtype));
}

}  // namespace terra::comm
