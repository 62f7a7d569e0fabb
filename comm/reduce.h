// Host reduction kernels shared by the backends that reduce on the CPU: the
// fake (all of its arithmetic) and MPI (float16/bfloat16, which MPI lacks,
// and the division of kAvg).
//
// Integer sums wrap around (two's complement) instead of being undefined.
// float16 and bfloat16 compute in float32 and round each result to nearest
// even. NaN propagates through kMax and kMin as it does through kSum.
#pragma once

#include <cstddef>

#include "comm/types.h"

namespace terra::comm {

// accumulator[i] = accumulator[i] (op) operand[i]; kAvg accumulates as kSum.
void ReduceInto(void* accumulator, const void* operand, size_t count, DataType dtype, ReduceOp op);

// data[i] /= divisor: IEEE division for floating point, floor division for
// integers (the rounding of ReduceOp::kAvg, types.h).
void DivideBy(void* data, size_t count, DataType dtype, int divisor);

}  // namespace terra::comm
