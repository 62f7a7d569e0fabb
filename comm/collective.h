// One submitted collective as a value: what the backends queue, validate and
// name in their messages. Internal to comm/ implementations.
#pragma once

#include <chrono>
#include <string>

#include "comm/communicator.h"
#include "comm/types.h"

namespace terra::comm {

enum class CollectiveKind { kAllreduce, kBroadcast, kAllgather, kReduceScatter, kBarrier };

struct Collective {
  CollectiveKind kind = CollectiveKind::kBarrier;
  Buffer input;   // Allreduce and Broadcast: the buffer, in place
  Buffer output;  // Allgather and ReduceScatter only
  ReduceOp op = ReduceOp::kSum;
  int root = 0;
  std::chrono::milliseconds timeout = kDefaultCollectiveTimeout;
  void* stream = nullptr;  // the options' cudaStream_t (CUDA backends only)

  static Collective Of(Buffer buffer, const AllreduceOptions& options);
  static Collective Of(Buffer buffer, const BroadcastOptions& options);
  static Collective Of(Buffer input, Buffer output, const AllgatherOptions& options);
  static Collective Of(Buffer input, Buffer output, const ReduceScatterOptions& options);
  static Collective Of(const BarrierOptions& options);

  bool reduces() const {
    return kind == CollectiveKind::kAllreduce || kind == CollectiveKind::kReduceScatter;
  }
};

const char* CollectiveKindName(CollectiveKind kind);

// "allreduce(sum) of 1024 x float32 on rank 1 of 4 [mpi]".
std::string Describe(const Collective& collective, int rank, int world_size, const char* backend);

// Throws terra::Error naming the mistake: a buffer not on `device_type`, null
// data with a non-zero count, sizes that do not match world_size, mismatched
// dtypes, a root out of range.
void Validate(const Collective& collective, int world_size, DeviceType device_type,
              const char* backend);

// The same collective on every rank? Returns "" or what differs ("count 4 on
// rank 0 but 8 on rank 1"), for backends that see every rank's call.
std::string Mismatch(const Collective& a, int rank_a, const Collective& b, int rank_b);

}  // namespace terra::comm
