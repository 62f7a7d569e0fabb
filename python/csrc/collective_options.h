// Collective arguments as Python gives them, for the bindings that issue
// collectives (collective_bindings.cc directly, tracing_bindings.cc queued
// on the co-executor).
#pragma once

#include <cstdint>
#include <optional>

#include "comm/types.h"
#include "runtime/process_group.h"

namespace terra::python {

// timeout: seconds or None (the default); stream: a cudaStream_t as an
// integer (torch.cuda.Stream.cuda_stream) or 0.
runtime::CollectiveOptions ToOptions(std::optional<double> seconds, uintptr_t stream = 0);
// op: terra.distributed.ReduceOp's value.
comm::ReduceOp ToOp(int op);

}  // namespace terra::python
