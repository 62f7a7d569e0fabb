#include "comm/types.h"

#include <cstring>

#include "runtime/base/check.h"

namespace terra::comm {
namespace {

uint32_t Bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

float FromBits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

}  // namespace

size_t Buffer::bytes() const { return count * DataTypeSize(dtype); }

size_t DataTypeSize(DataType dtype) {
  switch (dtype) {
    case DataType::kFloat64:
    case DataType::kInt64:
      return 8;
    case DataType::kFloat32:
    case DataType::kInt32:
      return 4;
    case DataType::kFloat16:
    case DataType::kBFloat16:
      return 2;
    case DataType::kUInt8:
    case DataType::kInt8:
      return 1;
  }
  TERRA_INTERNAL_CHECK(false, "unknown DataType ", static_cast<int>(dtype));
}

const char* DataTypeName(DataType dtype) {
  switch (dtype) {
    case DataType::kFloat32:
      return "float32";
    case DataType::kFloat64:
      return "float64";
    case DataType::kFloat16:
      return "float16";
    case DataType::kBFloat16:
      return "bfloat16";
    case DataType::kInt32:
      return "int32";
    case DataType::kInt64:
      return "int64";
    case DataType::kUInt8:
      return "uint8";
    case DataType::kInt8:
      return "int8";
  }
  return "unknown";
}

bool IsFloatingPoint(DataType dtype) {
  return dtype == DataType::kFloat32 || dtype == DataType::kFloat64 ||
         dtype == DataType::kFloat16 || dtype == DataType::kBFloat16;
}

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "unknown";
}

std::string DeviceName(const Device& device) {
  if (device.type == DeviceType::kCpu) return "cpu";
  return StrCat("cuda:", device.index);
}

// After F. Giesen's float_to_half_fast3_rtne (public domain).
uint16_t FloatToHalf(float value) {
  constexpr uint32_t kInfinity = 255u << 23;
  constexpr uint32_t kHalfMax = (127u + 16u) << 23;
  constexpr uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  uint32_t f = Bits(value);
  uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint16_t out;
  if (f >= kHalfMax) {
    out = f > kInfinity ? 0x7e00 : 0x7c00;
  } else if (f < (113u << 23)) {
    out = static_cast<uint16_t>(Bits(FromBits(f) + FromBits(kDenormMagic)) - kDenormMagic);
  } else {
    uint32_t mantissa_odd = (f >> 13) & 1u;
    f += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;
    f += mantissa_odd;
    out = static_cast<uint16_t>(f >> 13);
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

float HalfToFloat(uint16_t bits) {
  constexpr uint32_t kMagic = 113u << 23;
  constexpr uint32_t kShiftedExponent = 0x7c00u << 13;
  uint32_t out = (bits & 0x7fffu) << 13;
  uint32_t exponent = kShiftedExponent & out;
  out += (127u - 15u) << 23;
  if (exponent == kShiftedExponent) {
    out += (128u - 16u) << 23;  // infinity or NaN
  } else if (exponent == 0) {
    out += 1u << 23;  // zero or subnormal: renormalize
    out = Bits(FromBits(out) - FromBits(kMagic));
  }
  return FromBits(out | (static_cast<uint32_t>(bits & 0x8000u) << 16));
}

uint16_t FloatToBFloat16(float value) {
  uint32_t f = Bits(value);
  if ((f & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((f >> 16) | 0x40u);  // quiet NaN
  f += 0x7fffu + ((f >> 16) & 1u);
  return static_cast<uint16_t>(f >> 16);
}

float BFloat16ToFloat(uint16_t bits) { return FromBits(static_cast<uint32_t>(bits) << 16); }

}  // namespace terra::comm
