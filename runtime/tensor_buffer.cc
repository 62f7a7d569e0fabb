#include "runtime/tensor_buffer.h"

#include "runtime/base/check.h"

namespace terra::runtime {

comm::DataType ToDataType(at::ScalarType type, const char* what) {
  switch (type) {
    case at::kFloat: return comm::DataType::kFloat32;
    case at::kDouble: return comm::DataType::kFloat64;
    case at::kHalf: return comm::DataType::kFloat16;
    case at::kBFloat16: return comm::DataType::kBFloat16;
    case at::kInt: return comm::DataType::kInt32;
    case at::kLong: return comm::DataType::kInt64;
    case at::kByte: return comm::DataType::kUInt8;
    case at::kChar: return comm::DataType::kInt8;
    case at::kBool: return comm::DataType::kUInt8;  // 0/1 bytes; max/min are or/and
    default: break;
  }
  TERRA_CHECK(false, what, " has dtype ", c10::toString(type),
              ", which collectives do not carry: use float32, float64, float16, bfloat16, "
              "int32, int64, uint8, int8 or bool");
  return comm::DataType::kFloat32;
}

comm::Buffer ToBuffer(const at::Tensor& tensor, const char* what) {
  TERRA_CHECK(tensor.defined(), what, " is an undefined tensor");
  TERRA_CHECK(tensor.is_contiguous(), what, " is not contiguous (sizes ", tensor.sizes(),
              ", strides ", tensor.strides(), "): pass tensor.contiguous() and copy back");
  TERRA_CHECK(!tensor.is_sparse(), what, " is sparse: collectives need a dense tensor");
  comm::Buffer buffer;
  buffer.data = tensor.data_ptr();
  buffer.count = static_cast<size_t>(tensor.numel());
  buffer.dtype = ToDataType(tensor.scalar_type(), what);
  const c10::Device device = tensor.device();
  if (device.is_cpu()) {
    buffer.device = {comm::DeviceType::kCpu, -1};
  } else if (device.is_cuda()) {
    buffer.device = {comm::DeviceType::kCuda, device.index()};
  } else {
    TERRA_CHECK(false, what, " is on ", device.str(),
                ": Terra's collectives take CPU tensors (MPI) and CUDA tensors (NCCL)");
  }
  return buffer;
}

}  // namespace terra::runtime
