#include "runtime/executor.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <chrono>
#include <utility>

#include "runtime/base/check.h"

namespace terra::runtime {
namespace {

constexpr const char* kNotReady =
    "Terra: this tensor's value is still being computed by the co-execution executor, and the "
    "program read it through a path Terra does not watch. Report the call that read it; "
    "meanwhile run with --mode trace (or terra.enable(\"trace\")) to avoid co-execution.";

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string Where(const Work& work) {
  std::string where = work.where;
  if (where.empty() && work.location != nullptr) where = graph::ShortLocation(*work.location);
  return work.op.operator_name().name + " issued at " + where;
}

}  // namespace

at::Tensor MakeFuture(c10::IntArrayRef sizes, c10::IntArrayRef strides, c10::ScalarType dtype,
                      c10::Device device) {
  // No memory yet: the executor moves the result's allocation in (or
  // allocates and copies when the layouts differ).
  const size_t nbytes = at::detail::computeStorageNbytes(sizes, strides, c10::elementSize(dtype));
  auto storage = c10::make_intrusive<c10::StorageImpl>(
      c10::StorageImpl::use_byte_size_t(), c10::SymInt(static_cast<int64_t>(nbytes)),
      c10::DataPtr(nullptr, device), c10::GetAllocator(device.type()), /*resizable=*/false);
  storage->release_data_and_set_meta_custom_data_ptr_error_msg_(kNotReady);
  at::Tensor t = at::detail::make_tensor<c10::TensorImpl>(
      c10::Storage(std::move(storage)),
      c10::DispatchKeySet(c10::computeDispatchKey(dtype, c10::kStrided, device)),
      c10::scalarTypeToTypeMeta(dtype));
  t.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides);
  return t;
}

Executor::Executor(bool synchronous, WaitWrapper around_wait)
    : synchronous_(synchronous), around_wait_(std::move(around_wait)) {
  if (!synchronous_) thread_ = std::thread([this] { Loop(); });
}

Executor::~Executor() {
  {
    std::unique_lock<std::mutex> lock = WaitUntilIdle();
    stop_ = true;
  }
  has_work_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::unique_lock<std::mutex> Executor::WaitUntilIdle() {
  std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
  auto wait = [&] {
    lock.lock();
    drained_.wait(lock, [this] { return queue_.empty() && !running_; });
  };
  if (around_wait_) {
    around_wait_(wait);
  } else {
    wait();
  }
  return lock;
}

void Executor::Submit(Work work) {
  ++submitted_;
  if (synchronous_) {
    if (error_) return;
    try {
      Run(work);
    } catch (...) {
      error_ = std::current_exception();
      error_where_ = Where(work);
      Drain();  // throws now: the error surfaces at the issuing line
    }
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(work));
  }
  has_work_.notify_one();
}

void Executor::Drain() {
  const double start = Now();
  std::unique_lock<std::mutex> lock = WaitUntilIdle();
  drain_wait_s_ += Now() - start;
  if (error_) {
    std::exception_ptr error = std::exchange(error_, nullptr);
    std::string where = std::move(error_where_);
    lock.unlock();
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      TERRA_CHECK(false, "the co-executed operation ", where, " failed: ", e.what());
    }
  }
}

double Executor::busy_seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return busy_s_;
}

void Executor::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    has_work_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_
    Work work = std::move(queue_.front());
    queue_.pop_front();
    running_ = true;
    const bool skip = error_ != nullptr;
    lock.unlock();
    const double start = Now();
    std::exception_ptr failure;
    if (!skip) {
      try {
        Run(work);
      } catch (...) {
        failure = std::current_exception();
      }
    }
    const double took = Now() - start;
    work = Work{work.op, {}, {}, std::move(work.where), work.location};  // drop references outside the lock
    lock.lock();
    busy_s_ += took;
    if (failure && !error_) {
      error_ = failure;
      error_where_ = Where(work);
    }
    running_ = false;
    if (queue_.empty()) drained_.notify_all();
  }
}

void Executor::Run(Work& work) {
  // Autograd ran on the program's thread when the op was issued.
  c10::impl::ExcludeDispatchKeyGuard below_autograd(c10::autograd_dispatch_keyset_with_ADInplaceOrView);
  torch::jit::Stack stack = std::move(work.inputs);
  work.op.callBoxed(&stack);
  size_t k = 0;
  for (const c10::IValue& v : stack) {
    // `own_refs`: references to `result` the stack (and a list's element
    // copy) account for; any more and someone else sees it, so no stealing.
    auto fill = [&](const at::Tensor& result, size_t own_refs) {
      if (k >= work.futures.size()) return;
      FutureOutput& out = work.futures[k++];
      c10::intrusive_ptr<c10::StorageImpl> storage = out.storage.lock();
      if (!storage) return;  // the program no longer holds this output
      storage->clear_data_ptr_access_error_msg_();
      c10::StorageImpl* source = result.storage().unsafeGetStorageImpl();
      const bool same_layout = result.sizes().equals(out.meta->sizes) &&
                               result.strides().equals(out.meta->strides) &&
                               result.storage_offset() == 0 && source->nbytes() == storage->nbytes();
      if (same_layout && result.storage().use_count() == 1 && result.use_count() <= own_refs) {
        // The result is a fresh allocation nobody else sees: move it in.
        storage->set_data_ptr_noswap(std::move(source->mutable_data_ptr()));
        return;
      }
      storage->set_data_ptr_noswap(storage->allocator()->allocate(storage->nbytes()));
      at::Tensor target = at::empty({0}, result.options());
      target.set_(c10::Storage(std::move(storage)), 0, out.meta->sizes, out.meta->strides);
      target.copy_(result);
    };
    if (v.isTensor()) {
      fill(v.toTensor(), 1);
    } else if (v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorList()) fill(t, 2);
    }
  }
  TERRA_INTERNAL_CHECK(k == work.futures.size(), work.op.operator_name().name, " returned ", k,
                       " tensors for ", work.futures.size(), " futures");
}

}  // namespace terra::runtime
