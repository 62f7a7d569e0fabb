// The Torch adapter of comm/: describes a tensor's memory as a comm::Buffer.
// comm/ never sees ATen; this is the one place where the two meet.
#pragma once

#include <ATen/core/Tensor.h>

#include "comm/types.h"

namespace terra::runtime {

// The Buffer over `tensor`'s storage. Throws terra::Error naming `what` (e.g.
// "all_reduce's tensor") when the tensor is undefined, not contiguous, on a
// device other than the CPU or CUDA, or of a dtype collectives do not carry.
// The Buffer borrows the memory: the caller keeps `tensor` alive until the
// collective's Work completes.
comm::Buffer ToBuffer(const at::Tensor& tensor, const char* what);

comm::DataType ToDataType(at::ScalarType type, const char* what);

}  // namespace terra::runtime
