// ProcessGroup: the collectives of terra.distributed on tensors, for one
// process of a job. It owns the communicators and picks one per call from the
// tensors' device: MpiCommunicator for CPU tensors, the NCCL communicator for
// CUDA tensors (one per device). Each is formed on first use, which is a
// collective step: every rank makes its first CPU (or CUDA) collective in the
// same order, as it must anyway.
//
// A world of one process needs no communicator: its collectives are local
// copies (or nothing) and complete at once, so a program runs unchanged
// without terrarun.
//
// Lifetime and threading: one ProcessGroup per process, created by
// terra.distributed and destroyed at shutdown (which finalizes MPI together
// with the other ranks). Methods may be called from any thread; the order of
// calls is the order of the collectives (communicator.h). The group keeps
// every tensor of a pending collective alive until it completes, so a caller
// may drop a TensorWork without waiting.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "comm/communicator.h"

namespace terra::comm::control {
class ControlClient;
}

namespace terra::runtime {

// A pending collective and the tensors it uses.
class TensorWork {
 public:
  TensorWork(std::shared_ptr<comm::Work> work, std::vector<at::Tensor> tensors);

  // Work::Wait's semantics (comm/work.h); once it returns, the output tensors
  // hold the result.
  void Wait(std::chrono::milliseconds timeout = comm::Work::kWaitForever);
  bool IsCompleted() const;
  const std::string& description() const;

 private:
  friend class ProcessGroup;
  std::shared_ptr<comm::Work> work_;
  std::vector<at::Tensor> tensors_;
};

struct CollectiveOptions {
  std::chrono::milliseconds timeout = comm::kDefaultCollectiveTimeout;
  // CUDA tensors: the cudaStream_t the collective is ordered after (Torch's
  // current stream of the tensor's device); nullptr: the legacy default stream.
  void* stream = nullptr;
};

class ProcessGroup {
 public:
  // `client` may be null only when world_size is 1; it must outlive the group.
  ProcessGroup(comm::control::ControlClient* client, int rank, int world_size);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return world_size_; }

  std::shared_ptr<TensorWork> AllReduce(const at::Tensor& tensor, comm::ReduceOp op,
                                        CollectiveOptions options = {});
  std::shared_ptr<TensorWork> Broadcast(const at::Tensor& tensor, int root,
                                        CollectiveOptions options = {});
  // output: world_size blocks of input's numel, block r from rank r.
  std::shared_ptr<TensorWork> AllGather(const at::Tensor& output, const at::Tensor& input,
                                        CollectiveOptions options = {});
  // input: world_size blocks of output's numel; output gets block `rank`
  // of the reduction.
  std::shared_ptr<TensorWork> ReduceScatter(const at::Tensor& output, const at::Tensor& input,
                                            comm::ReduceOp op, CollectiveOptions options = {});
  // Over the CPU communicator.
  std::shared_ptr<TensorWork> Barrier(CollectiveOptions options = {});

  // Leaves the communicators open, for a rank that exits while the others do
  // not (closing MPI would wait for them): the destructor then closes nothing.
  // Collectives after this fail.
  void Abandon();

  // The backend a tensor on `device` uses: "mpi", "nccl" or "local".
  const char* BackendFor(const c10::Device& device);

 private:
  comm::Communicator& ForDevice(const c10::Device& device);
  std::shared_ptr<TensorWork> Track(std::shared_ptr<comm::Work> work,
                                    std::vector<at::Tensor> tensors);
  std::shared_ptr<TensorWork> Done(std::string description, std::vector<at::Tensor> tensors);

  comm::control::ControlClient* const client_;
  const int rank_;
  const int world_size_;
  std::mutex mutex_;
  std::unique_ptr<comm::Communicator> cpu_;
  std::map<int, std::unique_ptr<comm::Communicator>> cuda_;  // by device index
  std::vector<std::shared_ptr<TensorWork>> pending_;
  bool abandoned_ = false;
};

}  // namespace terra::runtime
