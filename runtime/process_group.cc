#include "runtime/process_group.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <utility>

#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "runtime/base/check.h"
#include "runtime/base/status.h"
#include "runtime/tensor_buffer.h"

namespace terra::runtime {

TensorWork::TensorWork(std::shared_ptr<comm::Work> work, std::vector<at::Tensor> tensors)
    : work_(std::move(work)), tensors_(std::move(tensors)) {}

void TensorWork::Wait(std::chrono::milliseconds timeout) { work_->Wait(timeout); }

bool TensorWork::IsCompleted() const { return work_->IsCompleted(); }

const std::string& TensorWork::description() const { return work_->description(); }

ProcessGroup::ProcessGroup(comm::control::ControlClient* client, int rank, int world_size)
    : client_(client), rank_(rank), world_size_(world_size) {
  TERRA_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "rank ", rank,
              " is not in a world of ", world_size);
  TERRA_CHECK(client != nullptr || world_size == 1,
              "a world of several ranks needs the control plane: launch with terrarun");
}

ProcessGroup::~ProcessGroup() {
  // Communicators wait for what is queued before they close (MPI finalizes
  // with the other ranks); CUDA before CPU, the reverse of nothing in
  // particular, but fixed, so every rank closes in the same order.
  cuda_.clear();
  cpu_.reset();
}

void ProcessGroup::Abandon() {
  std::lock_guard<std::mutex> lock(mutex_);
  abandoned_ = true;
  // Deliberately leaked: their destructors would finalize MPI with ranks
  // that are not finalizing. The process is about to exit.
  (void)cpu_.release();
  for (auto& [index, communicator] : cuda_) (void)communicator.release();
  cuda_.clear();
  (void)new std::vector<std::shared_ptr<TensorWork>>(std::move(pending_));
}

const char* ProcessGroup::BackendFor(const c10::Device& device) {
  if (world_size_ == 1) return "local";
  return device.is_cuda() ? "nccl" : "mpi";
}

comm::Communicator& ProcessGroup::ForDevice(const c10::Device& device) {
  std::lock_guard<std::mutex> lock(mutex_);
  TERRA_CHECK(!abandoned_, "this process has left the job (terra.distributed.shutdown): "
                           "no collectives after it");
  if (device.is_cuda()) {
    auto& slot = cuda_[device.index()];
    if (!slot) slot = comm::CreateNcclCommunicator(client_, rank_, world_size_, device.index());
    return *slot;
  }
  if (!cpu_) cpu_ = comm::MpiCommunicator::Create(client_, rank_, world_size_);
  return *cpu_;
}

std::shared_ptr<TensorWork> ProcessGroup::Track(std::shared_ptr<comm::Work> work,
                                                std::vector<at::Tensor> tensors) {
  auto tracked = std::make_shared<TensorWork>(std::move(work), std::move(tensors));
  std::lock_guard<std::mutex> lock(mutex_);
  pending_.erase(std::remove_if(pending_.begin(), pending_.end(),
                                [](const auto& w) { return w->IsCompleted(); }),
                 pending_.end());
  pending_.push_back(tracked);
  return tracked;
}

std::shared_ptr<TensorWork> ProcessGroup::Done(std::string description,
                                               std::vector<at::Tensor> tensors) {
  auto work = std::make_shared<comm::Work>(std::move(description));
  work->Complete(Status::Ok());
  return std::make_shared<TensorWork>(std::move(work), std::move(tensors));
}

namespace {

void CheckSameKind(const at::Tensor& a, const at::Tensor& b, const char* op) {
  TERRA_CHECK(a.scalar_type() == b.scalar_type(), op, ": output is ",
              c10::toString(a.scalar_type()), " but input is ", c10::toString(b.scalar_type()),
              ": use one dtype");
  TERRA_CHECK(a.device() == b.device(), op, ": output is on ", a.device().str(),
              " but input is on ", b.device().str(), ": use one device");
}

// The communicator's options struct with the group's per-call settings.
template <typename Options>
Options With(const CollectiveOptions& collective) {
  Options options;
  options.timeout = collective.timeout;
  options.stream = collective.stream;
  return options;
}

void CheckReducible(const at::Tensor& tensor, comm::ReduceOp op, const char* what) {
  TERRA_CHECK(tensor.scalar_type() != at::kBool ||
                  (op == comm::ReduceOp::kMax || op == comm::ReduceOp::kMin),
              what, " is a bool tensor: reduce it with max (any) or min (all), or convert it "
                    "to an integer type to sum it");
}

}  // namespace

std::shared_ptr<TensorWork> ProcessGroup::AllReduce(const at::Tensor& tensor, comm::ReduceOp op,
                                                    CollectiveOptions collective) {
  comm::Buffer buffer = ToBuffer(tensor, "all_reduce's tensor");
  CheckReducible(tensor, op, "all_reduce's tensor");
  if (world_size_ == 1) return Done("all_reduce (local)", {tensor});
  auto options = With<comm::AllreduceOptions>(collective);
  options.op = op;
  return Track(ForDevice(tensor.device()).Allreduce(buffer, options), {tensor});
}

std::shared_ptr<TensorWork> ProcessGroup::Broadcast(const at::Tensor& tensor, int root,
                                                    CollectiveOptions collective) {
  comm::Buffer buffer = ToBuffer(tensor, "broadcast's tensor");
  TERRA_CHECK(root >= 0 && root < world_size_, "broadcast: src=", root,
              " is not a rank of this job (world size ", world_size_, ")");
  if (world_size_ == 1) return Done("broadcast (local)", {tensor});
  auto options = With<comm::BroadcastOptions>(collective);
  options.root = root;
  return Track(ForDevice(tensor.device()).Broadcast(buffer, options), {tensor});
}

std::shared_ptr<TensorWork> ProcessGroup::AllGather(const at::Tensor& output,
                                                    const at::Tensor& input,
                                                    CollectiveOptions collective) {
  comm::Buffer in = ToBuffer(input, "all_gather's input");
  comm::Buffer out = ToBuffer(output, "all_gather's output");
  CheckSameKind(output, input, "all_gather");
  TERRA_CHECK(output.numel() == input.numel() * world_size_, "all_gather: output has ",
              output.numel(), " elements but needs input's ", input.numel(), " times the world size ",
              world_size_);
  if (world_size_ == 1) {
    output.view({-1}).copy_(input.view({-1}));
    return Done("all_gather (local)", {output, input});
  }
  auto options = With<comm::AllgatherOptions>(collective);
  return Track(ForDevice(input.device()).Allgather(in, out, options), {output, input});
}

std::shared_ptr<TensorWork> ProcessGroup::ReduceScatter(const at::Tensor& output,
                                                        const at::Tensor& input,
                                                        comm::ReduceOp op,
                                                        CollectiveOptions collective) {
  comm::Buffer in = ToBuffer(input, "reduce_scatter's input");
  comm::Buffer out = ToBuffer(output, "reduce_scatter's output");
  CheckSameKind(output, input, "reduce_scatter");
  CheckReducible(input, op, "reduce_scatter's input");
  TERRA_CHECK(input.numel() == output.numel() * world_size_, "reduce_scatter: input has ",
              input.numel(), " elements but needs output's ", output.numel(),
              " times the world size ", world_size_);
  if (world_size_ == 1) {
    output.view({-1}).copy_(input.view({-1}));
    return Done("reduce_scatter (local)", {output, input});
  }
  auto options = With<comm::ReduceScatterOptions>(collective);
  options.op = op;
  return Track(ForDevice(input.device()).ReduceScatter(in, out, options), {output, input});
}

std::shared_ptr<TensorWork> ProcessGroup::Barrier(CollectiveOptions collective) {
  if (world_size_ == 1) return Done("barrier (local)", {});
  auto options = With<comm::BarrierOptions>(collective);
  return Track(ForDevice(c10::Device(c10::kCPU)).Barrier(options), {});
}

}  // namespace terra::runtime
