#include <cstdint>
#include <type_traits>

#include "comm/nccl_kernels.h"

namespace terra::comm {
namespace {

constexpr unsigned kThreads = 256;
constexpr size_t kMaxBlocks = 4096;  // a grid-stride loop covers the rest

// Wide: the type the division runs in (int for 8-bit types, so that a
// divisor above 127 still fits).
template <typename T, typename Wide>
__global__ void FloorDivideKernel(T* data, size_t count, Wide divisor) {
  size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    Wide value = data[i];
    Wide quotient = value / divisor;  // toward zero
    if constexpr (std::is_signed_v<Wide>) {
      if (value < 0 && quotient * divisor != value) --quotient;  // toward -infinity
    }
    data[i] = static_cast<T>(quotient);
  }
}

template <typename T, typename Wide = T>
cudaError_t Launch(void* data, size_t count, int divisor, cudaStream_t stream) {
  size_t blocks = (count + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  FloorDivideKernel<T, Wide><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<T*>(data), count, static_cast<Wide>(divisor));
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchFloorDivide(void* data, size_t count, DataType dtype, int divisor,
                              cudaStream_t stream) {
  if (divisor < 1) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  switch (dtype) {
    case DataType::kInt32:
      return Launch<int32_t>(data, count, divisor, stream);
    case DataType::kInt64:
      return Launch<int64_t>(data, count, divisor, stream);
    case DataType::kUInt8:
      return Launch<uint8_t, int>(data, count, divisor, stream);
    case DataType::kInt8:
      return Launch<int8_t, int>(data, count, divisor, stream);
    case DataType::kFloat32:
    case DataType::kFloat64:
    case DataType::kFloat16:
    case DataType::kBFloat16:
      break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace terra::comm
