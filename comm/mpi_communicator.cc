#include "comm/mpi_communicator.h"

#include <unistd.h>

#include <climits>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "comm/collective.h"
#include "comm/mpi_world.h"
#include "comm/reduce.h"
#include "comm/watchdog.h"
#include "runtime/base/check.h"
#include "runtime/base/log.h"

namespace terra::comm {
namespace {

// How long a broken communicator's destructor waits for its progress thread.
constexpr std::chrono::milliseconds kAbandonAfter{1000};

std::string Hostname() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

MPI_Datatype MpiType(DataType dtype) {
  // float16 and bfloat16 travel as 16-bit words, reduced by our own ops (HalfOp).
  return NativeMpiType(dtype).value_or(MPI_UINT16_T);
}

// MPI has no 16-bit floating point: these user ops reduce it with reduce.h.
template <DataType kType, ReduceOp kOp>
void HalfOp(void* in, void* inout, int* length, MPI_Datatype*) {
  ReduceInto(inout, in, static_cast<size_t>(*length), kType, kOp);
}

void CheckCount(const Collective& c) {
  for (const Buffer* b : {&c.input, &c.output}) {
    TERRA_CHECK(b->count <= static_cast<size_t>(INT_MAX), CollectiveKindName(c.kind), ": ",
                b->count, " elements is more than MPI takes in one call (", INT_MAX,
                "); split the buffer");
  }
}

struct Task {
  std::optional<Collective> collective;    // a collective, or
  std::function<void(MPI_Comm)> raw_task;  // RunOnProgressThread's task
  std::shared_ptr<Work> work;
};

}  // namespace

class MpiCommunicator::Impl {
 public:
  Impl(int rank, int world_size)
      : context_{rank, Hostname()}, world_size_(world_size), watchdog_([this](const Work& expired) {
          Break(StrCat(expired.description(), " timed out"));
        }) {}

  ~Impl() {
    if (thread_.joinable()) thread_.join();
  }

  // Starts the progress thread and waits until it has formed the world.
  void Start(control::ControlClient* client, const MpiCommunicatorOptions& options) {
    std::promise<void> ready;
    std::future<void> formed = ready.get_future();
    thread_ = std::thread([&, this] { ThreadMain(client, options, &ready); });
    try {
      formed.get();
    } catch (...) {
      thread_.join();
      throw;
    }
  }

  // Stops the progress thread once the queue is drained. False if it did not
  // stop (broken, and stuck in MPI): the caller must then leak this Impl.
  bool Stop() {
    std::unique_lock<std::mutex> lock(mutex_);
    stopping_ = true;
    queue_cv_.notify_all();
    exited_cv_.wait(lock, [this] { return exited_ || !broken_reason_.empty(); });
    if (!exited_ && !exited_cv_.wait_for(lock, kAbandonAfter, [this] { return exited_; })) {
      thread_.detach();
      return false;
    }
    lock.unlock();
    thread_.join();
    return true;
  }

  int rank() const { return context_.rank; }
  int size() const { return world_size_; }

  std::shared_ptr<Work> Submit(const Collective& c) {
    Validate(c, world_size_, DeviceType::kCpu, "mpi");
    CheckCount(c);
    auto work = std::make_shared<Work>(Describe(c, context_.rank, world_size_, "mpi"));
    Enqueue(Task{c, {}, work});
    if (c.timeout != kNoTimeout) {
      watchdog_.Watch(work, Watchdog::Clock::now() + c.timeout,
                      Status(StatusCode::kTimeout, TimeoutMessage(*work, c.timeout)));
    }
    return work;
  }

  std::shared_ptr<Work> SubmitRaw(std::string description, std::function<void(MPI_Comm)> task) {
    auto work = std::make_shared<Work>(
        StrCat(description, " on rank ", context_.rank, " of ", world_size_, " [mpi]"));
    Enqueue(Task{std::nullopt, std::move(task), work});
    return work;
  }

 private:
  std::string TimeoutMessage(const Work& work, std::chrono::milliseconds timeout) const {
    return StrCat(
        work.description(), " (host ", context_.host, ") did not complete within its timeout of ",
        static_cast<double>(timeout.count()) / 1000.0,
        " s: another rank never joined it (it died, hangs, or issued different collectives). "
        "MPI cannot cancel a collective, so this communicator is unusable: report the error "
        "and exit; terrarun then stops the other ranks.");
  }

  void Enqueue(Task task) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!broken_reason_.empty()) {
      task.work->Complete(Status(StatusCode::kAborted, StrCat(task.work->description(),
                                                              " was not run: ", broken_reason_)));
      return;
    }
    TERRA_INTERNAL_CHECK(!stopping_, "collective submitted to an MpiCommunicator being destroyed");
    queue_.push_back(std::move(task));
    queue_cv_.notify_one();
  }

  // A collective timed out (watchdog thread) or failed (progress thread):
  // fail everything queued, refuse everything later.
  void Break(const std::string& what) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (broken_reason_.empty())
      broken_reason_ = StrCat("the MPI communicator is broken since ", what);
    exited_cv_.notify_all();
    for (Task& task : queue_) {
      task.work->Complete(Status(StatusCode::kAborted, StrCat(task.work->description(),
                                                              " was not run: ", broken_reason_)));
    }
    queue_.clear();
  }

  void ThreadMain(control::ControlClient* client, const MpiCommunicatorOptions& options,
                  std::promise<void>* ready) {
    try {
      world_ =
          FormMpiWorld(client, context_.rank, world_size_,
                       MpiWorldOptions{options.store_prefix, options.formation_timeout}, context_);
      CreateHalfOps();
    } catch (...) {
      ready->set_exception(std::current_exception());
      return;  // MPI is left as it is: finalizing after a failed connect can hang
    }
    ready->set_value();
    Loop();
    bool broken;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      broken = !broken_reason_.empty();
    }
    if (!broken) Shutdown();  // a broken world cannot finalize: the others may be gone
    std::lock_guard<std::mutex> lock(mutex_);
    exited_ = true;
    exited_cv_.notify_all();
  }

  void Loop() {
    while (true) {
      Task task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        queue_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      Status status;
      try {
        if (task.collective) {
          RunCollective(*task.collective);
        } else {
          task.raw_task(world_.comm);
        }
      } catch (const std::exception& e) {
        status =
            Status(StatusCode::kInternal, StrCat(task.work->description(), " failed: ", e.what()));
        if (task.collective) Break(StrCat(task.work->description(), " failed"));
      }
      task.work->Complete(std::move(status));
    }
  }

  void Shutdown() {
    try {
      for (auto& op : half_ops_) {
        if (op != MPI_OP_NULL) TERRA_MPI_CHECK(context_, MPI_Op_free(&op));
      }
      CloseMpiWorld(&world_, context_);
    } catch (const std::exception& e) {
      TERRA_LOG(kWarning, "MpiCommunicator: ", e.what());
    }
  }

  void CreateHalfOps() {
    MPI_User_function* functions[] = {
        HalfOp<DataType::kFloat16, ReduceOp::kSum>,  HalfOp<DataType::kFloat16, ReduceOp::kMax>,
        HalfOp<DataType::kFloat16, ReduceOp::kMin>,  HalfOp<DataType::kBFloat16, ReduceOp::kSum>,
        HalfOp<DataType::kBFloat16, ReduceOp::kMax>, HalfOp<DataType::kBFloat16, ReduceOp::kMin>};
    for (size_t i = 0; i < 6; ++i)
      TERRA_MPI_CHECK(context_, MPI_Op_create(functions[i], 1, &half_ops_[i]));
  }

  MPI_Op MpiOp(ReduceOp op, DataType dtype) const {
    int index = op == ReduceOp::kMax ? 1 : op == ReduceOp::kMin ? 2 : 0;  // kAvg: sum, then divide
    if (dtype == DataType::kFloat16) return half_ops_[index];
    if (dtype == DataType::kBFloat16) return half_ops_[3 + index];
    return index == 1 ? MPI_MAX : index == 2 ? MPI_MIN : MPI_SUM;
  }

  void RunCollective(const Collective& c);

  MpiContext context_;
  const int world_size_;
  MpiWorld world_;  // progress thread only
  MPI_Op half_ops_[6] = {MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL,
                         MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL};
  std::thread thread_;

  std::mutex mutex_;
  std::condition_variable queue_cv_;
  std::condition_variable exited_cv_;
  std::deque<Task> queue_;
  std::string broken_reason_;
  bool stopping_ = false;
  bool exited_ = false;
  Watchdog watchdog_;  // last: destroyed (its thread stopped) first
};

void MpiCommunicator::Impl::RunCollective(const Collective& c) {
  const Buffer& in = c.input;
  int count = static_cast<int>(in.count);
  MPI_Datatype type = MpiType(in.dtype);
  MPI_Comm comm = world_.comm;
  switch (c.kind) {
    case CollectiveKind::kAllreduce:
      TERRA_MPI_CHECK(
          context_, MPI_Allreduce(MPI_IN_PLACE, in.data, count, type, MpiOp(c.op, in.dtype), comm));
      if (c.op == ReduceOp::kAvg) DivideBy(in.data, in.count, in.dtype, world_size_);
      return;
    case CollectiveKind::kBroadcast:
      TERRA_MPI_CHECK(context_, MPI_Bcast(in.data, count, type, c.root, comm));
      return;
    case CollectiveKind::kAllgather: {
      const void* send = in.data;
      if (in.data ==
          static_cast<char*>(c.output.data) + in.bytes() * static_cast<size_t>(context_.rank)) {
        send = MPI_IN_PLACE;  // the input already is this rank's block of the output
      }
      TERRA_MPI_CHECK(context_, MPI_Allgather(send, count, type, c.output.data, count, type, comm));
      return;
    }
    case CollectiveKind::kReduceScatter: {
      const Buffer& out = c.output;
      TERRA_MPI_CHECK(context_,
                      MPI_Reduce_scatter_block(in.data, out.data, static_cast<int>(out.count), type,
                                               MpiOp(c.op, in.dtype), comm));
      if (c.op == ReduceOp::kAvg) DivideBy(out.data, out.count, out.dtype, world_size_);
      return;
    }
    case CollectiveKind::kBarrier:
      TERRA_MPI_CHECK(context_, MPI_Barrier(comm));
      return;
  }
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::Create(control::ControlClient* client, int rank,
                                                         int world_size,
                                                         MpiCommunicatorOptions options) {
  auto impl = std::make_unique<Impl>(rank, world_size);
  impl->Start(client, options);
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(std::move(impl)));
}

MpiCommunicator::MpiCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MpiCommunicator::~MpiCommunicator() {
  if (!impl_->Stop()) {
    TERRA_LOG(
        kWarning,
        "MpiCommunicator: abandoning a progress thread stuck in MPI (a collective timed out)");
    (void)impl_.release();  // the stuck thread still uses it
  }
}

int MpiCommunicator::rank() const { return impl_->rank(); }
int MpiCommunicator::size() const { return impl_->size(); }

std::shared_ptr<Work> MpiCommunicator::Allreduce(Buffer buffer, const AllreduceOptions& options) {
  return impl_->Submit(Collective::Of(buffer, options));
}

std::shared_ptr<Work> MpiCommunicator::Broadcast(Buffer buffer, const BroadcastOptions& options) {
  return impl_->Submit(Collective::Of(buffer, options));
}

std::shared_ptr<Work> MpiCommunicator::Allgather(Buffer input, Buffer output,
                                                 const AllgatherOptions& options) {
  return impl_->Submit(Collective::Of(input, output, options));
}

std::shared_ptr<Work> MpiCommunicator::ReduceScatter(Buffer input, Buffer output,
                                                     const ReduceScatterOptions& options) {
  return impl_->Submit(Collective::Of(input, output, options));
}

std::shared_ptr<Work> MpiCommunicator::Barrier(const BarrierOptions& options) {
  return impl_->Submit(Collective::Of(options));
}

std::shared_ptr<Work> MpiCommunicator::RunOnProgressThread(std::string description,
                                                           std::function<void(MPI_Comm)> task) {
  return impl_->SubmitRaw(std::move(description), std::move(task));
}

}  // namespace terra::comm
