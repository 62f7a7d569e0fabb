// Communicator: collectives across the ranks of a job, on Buffers (types.h),
// asynchronous, each returning a Work (work.h).
//
// Implementations: MpiCommunicator (CPU buffers, mpi_communicator.h),
// NcclCommunicator (CUDA buffers, nccl_communicator.h; its stream semantics
// are there), FakeCommunicator (threads of one process, for tests;
// fake_communicator.h). Callers hold a Communicator& and the runtime picks
// the implementation from the buffers' device.
//
// Contract shared by every implementation:
//  - Every rank of the communicator issues the same collectives, with the
//    same kinds, counts, dtypes, ops and roots, in the same order. A rank
//    that issues something else, or nothing, makes the collective fail with
//    its timeout (or, where the backend can tell, with an error naming the
//    mismatch), never succeed with wrong data.
//  - A call validates its arguments and throws terra::Error at once for a
//    mistake (wrong device, wrong sizes, root out of range, null data);
//    nothing has been submitted then. Otherwise it returns a Work
//    immediately, without waiting for the other ranks.
//  - Collectives of one communicator run one at a time, in the order they
//    were submitted, and their Works complete in that order.
//  - Buffers belong to the caller and must stay valid and untouched until the
//    Work completes (types.h).
//  - The `timeout` of each options struct is measured from submission. A
//    collective not finished by then completes its Work with a kTimeout
//    Status naming the collective, the rank and the host, and the
//    communicator is broken: every later collective fails at once with
//    kAborted. A collective cannot be cancelled (in MPI or NCCL); the rank is
//    expected to report the error and exit, and terrarun then stops the other
//    ranks. kNoTimeout disables the deadline.
//  - Methods may be called from any thread, but the order of submission is
//    the order of the calls: callers on several threads must agree on it.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "comm/types.h"
#include "comm/work.h"

namespace terra::comm {

inline constexpr std::chrono::milliseconds kDefaultCollectiveTimeout = std::chrono::minutes(10);
inline constexpr std::chrono::milliseconds kNoTimeout = std::chrono::milliseconds::zero();

struct AllreduceOptions {
  ReduceOp op = ReduceOp::kSum;
  std::chrono::milliseconds timeout = kDefaultCollectiveTimeout;
  void* stream = nullptr;  // CUDA: cudaStream_t the collective is ordered after (nullptr: the
                           // legacy default stream); ignored by CPU backends
};

struct BroadcastOptions {
  int root = 0;
  std::chrono::milliseconds timeout = kDefaultCollectiveTimeout;
  void* stream = nullptr;  // CUDA: cudaStream_t the collective is ordered after (nullptr: the
                           // legacy default stream); ignored by CPU backends
};

struct AllgatherOptions {
  std::chrono::milliseconds timeout = kDefaultCollectiveTimeout;
  void* stream = nullptr;  // CUDA: cudaStream_t the collective is ordered after (nullptr: the
                           // legacy default stream); ignored by CPU backends
};

struct ReduceScatterOptions {
  ReduceOp op = ReduceOp::kSum;
  std::chrono::milliseconds timeout = kDefaultCollectiveTimeout;
  void* stream = nullptr;  // CUDA: cudaStream_t the collective is ordered after (nullptr: the
                           // legacy default stream); ignored by CPU backends
};

struct BarrierOptions {
  std::chrono::milliseconds timeout = kDefaultCollectiveTimeout;
  void* stream = nullptr;  // CUDA: cudaStream_t the collective is ordered after (nullptr: the
                           // legacy default stream); ignored by CPU backends
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* backend() const = 0;  // "mpi", "nccl", "fake"

  // In place: every rank's buffer ends up holding the reduction of all ranks'.
  virtual std::shared_ptr<Work> Allreduce(Buffer buffer, const AllreduceOptions& options) = 0;

  // In place: every rank's buffer ends up holding the root's.
  virtual std::shared_ptr<Work> Broadcast(Buffer buffer, const BroadcastOptions& options) = 0;

  // output.count == input.count * size(): block r of output is rank r's input.
  virtual std::shared_ptr<Work> Allgather(Buffer input, Buffer output,
                                          const AllgatherOptions& options) = 0;

  // input.count == output.count * size(): rank r's output is block r of the
  // reduction of all ranks' inputs.
  virtual std::shared_ptr<Work> ReduceScatter(Buffer input, Buffer output,
                                              const ReduceScatterOptions& options) = 0;

  // Completes on a rank once every rank has submitted it (and everything
  // submitted before it has completed).
  virtual std::shared_ptr<Work> Barrier(const BarrierOptions& options) = 0;
};

}  // namespace terra::comm
