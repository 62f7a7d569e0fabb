// NcclCommunicator: collectives on CUDA buffers through NCCL, made by
// CreateNcclCommunicator; callers hold the Communicator interface (the class
// is internal: nccl_communicator_impl.h). Built when TERRA_WITH_NCCL is ON;
// otherwise nccl_unavailable.cc provides the two functions below
// (CreateNcclCommunicator throws, NcclAvailable is false). This header needs
// no CUDA or NCCL header: streams travel as void*.
//
// Formation: rank 0 calls ncclGetUniqueId and Sets it (hex) in the control
// store under "<store_prefix><n>/id", where n counts the NCCL communicators
// this process has created (0, 1, ...): every rank must create its NCCL
// communicators in the same order. The other ranks Get it, bounded by
// formation_timeout. Every rank then starts a non-blocking NCCL communicator
// (ncclCommInitRankConfig, blocking = 0) and polls it until it is ready,
// bounded by formation_timeout again, aborting it (ncclCommAbort) past that:
// a rank that never joins fails formation with terra::TimeoutError instead
// of hanging it. A world of one needs no ControlClient.
//
// Streams (the `stream` of the options structs, communicator.h): the
// communicator's own stream (non-blocking) waits for an event recorded on the
// caller's stream, NCCL runs there, and an end event is recorded after it;
// the caller's stream does NOT wait for the collective. To use the results:
// Work::Wait (blocks the host until the end event has completed), or
// CudaWork::WaitOnStream (the device waits; the host does not). Buffers stay
// the caller's, and in use, until then (types.h).
//
// Submission returns once NCCL has enqueued the collective. NCCL connects
// peers lazily: the first collective that needs a new connection answers
// ncclInProgress until the peers reach it too, and the submitting thread
// polls it meanwhile (ncclCommGetAsyncError), bounded by the collective's
// timeout; past that the Work fails with kTimeout and the communicator
// breaks. Later collectives return at once.
//
// Completion and timeouts (communicator.h's contract): one completion thread
// per communicator watches the end events in submission order (busy_poll,
// then every poll_interval) and completes their Works. One still running
// past its options' timeout fails with kTimeout; the communicator is then
// aborted (ncclCommAbort, which makes NCCL's kernels exit, so the buffers may
// hold partial results) and broken: everything pending fails with kAborted,
// and so does every later collective, at once. An asynchronous NCCL error
// (ncclCommGetAsyncError, polled every millisecond while collectives are
// pending, every second otherwise) or a CUDA error seen on an end event does
// the same, with kInternal.
//
// CUDA graph capture: when the caller's stream is capturing
// (cudaStreamIsCapturing), NCCL runs directly on the caller's stream, with no
// event to the communicator's stream and no host synchronization, and the
// Work completes at once with ok: completion then means "recorded into the
// graph". Each replay of the graph runs the collective; its timeout is the
// graph launch's (the runtime's), not the options'. All ranks must capture
// the same collectives. Graphs holding NCCL work must be destroyed before
// their communicator.
//
// Reductions: kSum, kMax, kMin are NCCL's. kAvg is NCCL's ncclAvg for
// floating point (the rounding types.h describes); for integers it is ncclSum
// followed by a floor division on the same stream (nccl_kernels.h), because
// ncclAvg truncates integers toward zero while types.h floors. Barrier is a
// one-element allreduce.
//
// Threading: any thread may submit (one at a time, under a lock: NCCL calls
// on one communicator must not overlap). The thread's current CUDA device is
// switched to the communicator's for the call and switched back. The
// destructor waits until every pending collective has completed (a
// collective without timeout that never completes blocks it), then
// finalizes and destroys the NCCL communicator, or does nothing more if it
// was aborted.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "comm/work.h"

namespace terra::comm {

namespace control {
class ControlClient;
}

struct NcclCommunicatorOptions {
  std::string store_prefix = "terra/nccl/";
  // Bounds waiting for the unique id, NCCL's initialization, and the
  // finalization in the destructor.
  std::chrono::milliseconds formation_timeout{120000};
  // How the completion thread watches the oldest pending collective: without
  // sleeping for its first busy_poll (a small collective's Work then
  // completes within microseconds of the GPU finishing it), then every
  // poll_interval.
  std::chrono::microseconds busy_poll{200};
  std::chrono::microseconds poll_interval{50};
};

// The Work of an NCCL collective: what CreateNcclCommunicator's collectives
// return, behind std::shared_ptr<Work> (std::dynamic_pointer_cast to reach it).
class CudaWork : public Work {
 public:
  using Work::Work;

  // Makes `stream` (a cudaStream_t; nullptr: the legacy default stream) wait,
  // on the device, until the collective has finished there; returns without
  // blocking the host. Work already failed: throws its error, as Wait does.
  // After a timeout or abort the stream still proceeds (NCCL's kernels exit
  // on abort) but the buffers hold no result: check the Work. For a
  // collective recorded into a CUDA graph, valid only while that capture is
  // still open (it joins `stream` to the capture).
  virtual void WaitOnStream(void* stream) const = 0;
};

// Forms an NCCL communicator of `world_size` ranks on CUDA device
// `cuda_device` (an ordinal of this process: with one GPU per rank, usually
// LOCAL_RANK). Collective: every rank calls it; blocks until all have joined.
// `client` is used only during the call (may be null for a world of one).
// Throws terra::Error saying what to do: bad rank or device, no CUDA device,
// NCCL failing; terra::TimeoutError when a rank does not join in time.
std::unique_ptr<Communicator> CreateNcclCommunicator(control::ControlClient* client, int rank,
                                                     int world_size, int cuda_device,
                                                     NcclCommunicatorOptions options = {});

// True when this Terra was built with NCCL and the process sees a CUDA
// device, so that CreateNcclCommunicator can work. Does not block.
bool NcclAvailable();

}  // namespace terra::comm
