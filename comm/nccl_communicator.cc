// NcclCommunicator's formation, submission and teardown, and the factory
// (nccl_communicator.h states the contract; nccl_communicator_impl.h the
// locks; nccl_completion.cc completes the Works).
#include "comm/nccl_communicator.h"

#include <utility>

#include "comm/control/client.h"
#include "comm/nccl_communicator_impl.h"
#include "comm/nccl_kernels.h"
#include "runtime/base/check.h"
#include "runtime/base/log.h"

namespace terra::comm {
namespace {

// How often a call answered ncclInProgress is polled.
constexpr auto kSettlePoll = std::chrono::microseconds(100);

NcclClock::time_point DeadlineAfter(std::chrono::milliseconds timeout) {
  return timeout == kNoTimeout ? NcclClock::time_point::max() : NcclClock::now() + timeout;
}

double Seconds(std::chrono::milliseconds duration) {
  return static_cast<double>(duration.count()) / 1000.0;
}

}  // namespace

NcclWork::~NcclWork() {
  if (end_ != nullptr) (void)cudaEventDestroy(end_);
}

void NcclWork::WaitOnStream(void* stream) const {
  if (std::optional<Status> result = Result()) result->ThrowIfError();
  TERRA_CUDA_CHECK(context_, cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), end_, 0));
}

void NcclCommunicator::Form(control::ControlClient* client, const std::string& id_key) {
  NcclClock::time_point deadline = DeadlineAfter(options_.formation_timeout);
  DeviceGuard guard(device_, context_);
  ncclUniqueId id{};
  if (context_.rank == 0) {
    TERRA_NCCL_CHECK(context_, ncclGetUniqueId(&id));
    if (world_size_ > 1) client->Set(id_key, UniqueIdToHex(id));
  } else {
    std::string hex;
    try {
      hex = client->Get(id_key, options_.formation_timeout);
    } catch (const TimeoutError& e) {
      throw TimeoutError(StrCat("rank ", context_.rank, " (host ", context_.host,
                                ") waited in vain for rank 0's NCCL unique id under ", id_key, ": ",
                                e.what(),
                                ". Every rank must create its NCCL communicators in the same "
                                "order."));
    }
    TERRA_CHECK(UniqueIdFromHex(hex, &id), "the NCCL unique id under ", id_key, " is not ",
                2 * sizeof(id.internal), " hex digits: another program uses that store key");
  }
  TERRA_CUDA_CHECK(context_, cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  TERRA_CUDA_CHECK(context_, cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  TERRA_CUDA_CHECK(context_, cudaMalloc(&barrier_buffer_, sizeof(int32_t)));
  TERRA_CUDA_CHECK(context_, cudaMemset(barrier_buffer_, 0, sizeof(int32_t)));

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // initialization bounded by the deadline, and abortable
  ncclResult_t rc = ncclCommInitRankConfig(&comm_, world_size_, id, context_.rank, &config);
  rc = Settle(rc, deadline);
  if (rc != ncclSuccess) {
    if (comm_ != nullptr) (void)ncclCommAbort(comm_);
    comm_ = nullptr;
    if (rc == ncclInProgress) {
      throw TimeoutError(
          StrCat("forming the NCCL communicator of ", world_size_, " ranks on rank ", context_.rank,
                 " (host ", context_.host, ", cuda:", device_, ") did not finish within ",
                 Seconds(options_.formation_timeout),
                 " s: a rank did not call CreateNcclCommunicator (it died, or created its NCCL "
                 "communicators in another order)"));
    }
    CheckNccl(rc, "ncclCommInitRankConfig", __FILE__, __LINE__, context_);
  }
  completion_thread_ = std::thread([this] { CompletionLoop(); });
}

NcclCommunicator::~NcclCommunicator() {
  if (completion_thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    pending_cv_.notify_all();
    completion_thread_.join();  // once every pending Work has completed
  }
  try {
    DeviceGuard guard(device_, context_);
    Close();
    if (barrier_buffer_ != nullptr) TERRA_CUDA_CHECK(context_, cudaFree(barrier_buffer_));
    if (ready_ != nullptr) TERRA_CUDA_CHECK(context_, cudaEventDestroy(ready_));
    if (stream_ != nullptr) TERRA_CUDA_CHECK(context_, cudaStreamDestroy(stream_));
  } catch (const std::exception& e) {
    TERRA_LOG(kWarning, "NcclCommunicator: ", e.what());
  }
}

void NcclCommunicator::Close() {
  if (comm_ == nullptr) return;  // aborted (broken), or never formed
  // Non-blocking: finalize flushes and answers ncclInProgress until done;
  // destroy then frees locally.
  ncclResult_t rc = Settle(ncclCommFinalize(comm_), DeadlineAfter(options_.formation_timeout));
  if (rc == ncclSuccess) {
    rc = ncclCommDestroy(comm_);
    if (rc != ncclSuccess && rc != ncclInProgress) {
      TERRA_LOG(kWarning, "NcclCommunicator: ncclCommDestroy on rank ", context_.rank, ": ",
                NcclErrorText(rc));
    }
  } else {
    TERRA_LOG(kWarning, "NcclCommunicator: ncclCommFinalize on rank ", context_.rank, ": ",
              rc == ncclInProgress ? "not done within formation_timeout" : NcclErrorText(rc),
              "; aborting instead");
    (void)ncclCommAbort(comm_);
  }
  comm_ = nullptr;
}

std::shared_ptr<Work> NcclCommunicator::Submit(const Collective& c) {
  Validate(c, world_size_, DeviceType::kCuda, "nccl");
  auto check_device = [&](const Buffer& b) {
    TERRA_CHECK(b.device.index == device_, CollectiveKindName(c.kind), ": a buffer is on ",
                DeviceName(b.device), " but this NCCL communicator is on cuda:", device_);
  };
  if (c.kind != CollectiveKind::kBarrier) check_device(c.input);
  if (c.kind == CollectiveKind::kAllgather || c.kind == CollectiveKind::kReduceScatter) {
    check_device(c.output);
  }
  auto work = std::make_shared<NcclWork>(Describe(c, context_.rank, world_size_, "nccl"), context_);
  NcclClock::time_point deadline = DeadlineAfter(c.timeout);

  std::lock_guard<std::mutex> submit_lock(submit_mutex_);
  if (std::string reason = BrokenReason(); !reason.empty()) {
    work->Complete(
        Status(StatusCode::kAborted, StrCat(work->description(), " was not run: ", reason)));
    return work;
  }
  DeviceGuard guard(device_, context_);
  auto caller = static_cast<cudaStream_t>(c.stream);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  TERRA_CUDA_CHECK(context_, cudaStreamIsCapturing(caller, &capture));
  TERRA_CHECK(capture != cudaStreamCaptureStatusInvalidated, work->description(),
              ": the stream's CUDA graph capture has been invalidated (by a call not allowed "
              "during capture); end that capture and capture again");
  TERRA_CUDA_CHECK(context_, cudaEventCreateWithFlags(&work->end_, cudaEventDisableTiming));
  bool captured = capture == cudaStreamCaptureStatusActive;
  if (!captured) {  // stream_ waits for what the caller enqueued before
    TERRA_CUDA_CHECK(context_, cudaEventRecord(ready_, caller));
    TERRA_CUDA_CHECK(context_, cudaStreamWaitEvent(stream_, ready_, 0));
  }
  cudaStream_t stream = captured ? caller : stream_;
  // NCCL has nothing of this collective so far; from here on a failure breaks
  // the communicator.
  try {
    Run(c, stream, deadline);
    TERRA_CUDA_CHECK(context_, cudaEventRecord(work->end_, stream));
  } catch (const std::exception& e) {
    if (breaking_) {  // Settle gave up for a Break waiting on submit_mutex_: let it break
      work->Complete(
          Status(StatusCode::kAborted, StrCat(work->description(), " was aborted: ", e.what())));
      return work;
    }
    bool timed_out = dynamic_cast<const TimeoutError*>(&e) != nullptr;
    BreakLocked(StrCat(work->description(), timed_out ? " timed out" : " failed"), work,
                Status(timed_out ? StatusCode::kTimeout : StatusCode::kInternal,
                       StrCat(work->description(), " failed: ", e.what())));
    return work;
  }
  if (captured) {
    work->Complete(Status::Ok());  // recorded into the graph
    return work;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_.push_back(Pending{work, deadline, c.timeout});
  }
  pending_cv_.notify_all();
  return work;
}

void NcclCommunicator::Run(const Collective& c, cudaStream_t stream,
                           NcclClock::time_point deadline) {
  const Buffer& in = c.input;
  const Buffer& out = c.output;
  if (c.kind != CollectiveKind::kBarrier && in.count == 0) return;  // so on every rank
  ncclDataType_t type = NcclType(in.dtype);
  ncclRedOp_t op = NcclOp(c.op, in.dtype);
  bool floor_divide = c.op == ReduceOp::kAvg && !IsFloatingPoint(in.dtype) && world_size_ > 1;
  switch (c.kind) {
    case CollectiveKind::kAllreduce:
      TERRA_NCCL_CHECK(
          context_,
          Settle(ncclAllReduce(in.data, in.data, in.count, type, op, comm_, stream), deadline));
      if (floor_divide) {
        TERRA_CUDA_CHECK(context_,
                         LaunchFloorDivide(in.data, in.count, in.dtype, world_size_, stream));
      }
      return;
    case CollectiveKind::kBroadcast:
      TERRA_NCCL_CHECK(
          context_,
          Settle(ncclBroadcast(in.data, in.data, in.count, type, c.root, comm_, stream), deadline));
      return;
    case CollectiveKind::kAllgather:  // in place when `in` is block `rank` of `out`
      TERRA_NCCL_CHECK(
          context_,
          Settle(ncclAllGather(in.data, out.data, in.count, type, comm_, stream), deadline));
      return;
    case CollectiveKind::kReduceScatter:
      TERRA_NCCL_CHECK(
          context_, Settle(ncclReduceScatter(in.data, out.data, out.count, type, op, comm_, stream),
                           deadline));
      if (floor_divide) {
        TERRA_CUDA_CHECK(context_,
                         LaunchFloorDivide(out.data, out.count, out.dtype, world_size_, stream));
      }
      return;
    case CollectiveKind::kBarrier:
      TERRA_NCCL_CHECK(context_, Settle(ncclAllReduce(barrier_buffer_, barrier_buffer_, 1,
                                                      ncclInt32, ncclMax, comm_, stream),
                                        deadline));
      return;
  }
}

ncclResult_t NcclCommunicator::Settle(ncclResult_t rc, NcclClock::time_point deadline) {
  while (rc == ncclInProgress) {
    if (NcclClock::now() >= deadline || breaking_.load()) return ncclInProgress;
    std::this_thread::sleep_for(kSettlePoll);
    ncclResult_t state = ncclInProgress;
    ncclResult_t query = ncclCommGetAsyncError(comm_, &state);
    rc = query != ncclSuccess ? query : state;
  }
  return rc;
}

std::unique_ptr<Communicator> CreateNcclCommunicator(control::ControlClient* client, int rank,
                                                     int world_size, int cuda_device,
                                                     NcclCommunicatorOptions options) {
  TERRA_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "CreateNcclCommunicator: rank ",
              rank, " is not in a world of ", world_size, " ranks");
  TERRA_CHECK(cuda_device >= 0, "CreateNcclCommunicator: cuda_device ", cuda_device,
              " is not a CUDA device ordinal. NCCL works on CUDA buffers: pass the rank's GPU "
              "(usually LOCAL_RANK); CPU buffers take the MPI backend");
  TERRA_CHECK(client != nullptr || world_size == 1, "CreateNcclCommunicator: a world of ",
              world_size, " ranks needs a ControlClient to share NCCL's unique id");
  TERRA_CHECK(options.poll_interval.count() > 0 && options.busy_poll.count() >= 0,
              "CreateNcclCommunicator: poll_interval must be positive and busy_poll not negative");
  int count = 0;
  cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) (void)cudaGetLastError();  // not sticky: clear it
  TERRA_CHECK(rc == cudaSuccess && count > 0,
              "CreateNcclCommunicator: this process sees no CUDA device (cudaGetDeviceCount: ",
              rc == cudaSuccess ? "0 devices" : CudaErrorText(rc),
              "); check the NVIDIA driver and CUDA_VISIBLE_DEVICES, or use CPU buffers (MPI)");
  TERRA_CHECK(cuda_device < count, "CreateNcclCommunicator: cuda_device ", cuda_device,
              " does not exist: this process sees ", count,
              " CUDA device(s) (CUDA_VISIBLE_DEVICES renumbers them from 0)");
  static std::atomic<int> created{0};  // numbers the store keys; the same order on every rank
  std::string id_key = StrCat(options.store_prefix, created.fetch_add(1), "/id");
  auto communicator =
      std::make_unique<NcclCommunicator>(rank, world_size, cuda_device, std::move(options));
  communicator->Form(client, id_key);
  return communicator;
}

bool NcclAvailable() {
  int count = 0;
  cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) (void)cudaGetLastError();
  return rc == cudaSuccess && count > 0;
}

}  // namespace terra::comm
