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

// The deleter of a future storage's DataPtr, whose context is a reference
// to the future's slot. Also how a storage is recognised as a future's.
void ReleaseSlot(void* slot) {
  c10::raw::intrusive_ptr::decref(static_cast<Slot*>(slot));
}

c10::DataPtr SlotDataPtr(void* data, Slot* slot, c10::Device device) {
  c10::raw::intrusive_ptr::incref(slot);
  return c10::DataPtr(data, slot, &ReleaseSlot, device);
}

// The slot whose memory `t` lives in, or null (ordinary memory, or none).
Slot* SlotOf(const at::Tensor& t) {
  if (!t.defined() || !t.has_storage()) return nullptr;
  c10::StorageImpl* storage = t.storage().unsafeGetStorageImpl();
  if (storage == nullptr) return nullptr;
  const c10::DataPtr& ptr = storage->_mutable_data_ptr_no_checks();
  return ptr.get_deleter() == &ReleaseSlot ? static_cast<Slot*>(ptr.get_context()) : nullptr;
}

SlotArgument SlotArgumentOf(const at::Tensor& t, Slot* slot, uint32_t arg, int32_t element) {
  SlotArgument a;
  a.arg = arg;
  a.element = element;
  a.slot = c10::intrusive_ptr<Slot>::reclaim_copy(slot);
  a.sizes.assign(t.sizes().begin(), t.sizes().end());
  a.strides.assign(t.strides().begin(), t.strides().end());
  a.offset = t.storage_offset();
  a.keys = t.key_set() - c10::autograd_dispatch_keyset_with_ADInplaceOrView;
  a.dtype = t.dtype();
  return a;
}

// Replaces every argument in a future's memory by a SlotArgument (and a
// placeholder on the stack): the Work then holds no reference to the
// program's tensor or storage. Tensor lists are copied first.
void TakeSlotArguments(Work& work) {
  for (uint32_t i = 0; i < work.inputs.size(); ++i) {
    c10::IValue& v = work.inputs[i];
    if (v.isTensor()) {
      if (Slot* slot = SlotOf(v.toTensor())) {
        work.slot_args.push_back(SlotArgumentOf(v.toTensor(), slot, i, -1));
        v = c10::IValue(at::Tensor());
      }
    } else if (v.isTensorList()) {
      c10::List<at::Tensor> list = v.toTensorList();
      bool copied = false;
      for (size_t j = 0; j < list.size(); ++j) {
        const at::Tensor t = list.get(j);
        Slot* slot = SlotOf(t);
        if (slot == nullptr) continue;
        if (!copied) {
          list = list.copy();
          copied = true;
        }
        work.slot_args.push_back(SlotArgumentOf(t, slot, i, static_cast<int32_t>(j)));
        list.set(j, at::Tensor());
      }
      if (copied) v = c10::IValue(std::move(list));
    } else if (v.isList()) {  // Tensor?[] (index, index_put_)
      c10::List<c10::IValue> list = v.toList();
      bool copied = false;
      for (size_t j = 0; j < list.size(); ++j) {
        const c10::IValue e = list.get(j);
        if (!e.isTensor()) continue;
        Slot* slot = SlotOf(e.toTensor());
        if (slot == nullptr) continue;
        if (!copied) {
          list = list.copy();
          copied = true;
        }
        work.slot_args.push_back(SlotArgumentOf(e.toTensor(), slot, i, static_cast<int32_t>(j)));
        list.set(j, c10::IValue());
      }
      if (copied) v = c10::IValue(std::move(list));
    }
  }
}

// The executor's own tensor for a slot argument (executor thread).
at::Tensor Rebuild(const SlotArgument& a, const Work& work) {
  TERRA_INTERNAL_CHECK(static_cast<bool>(a.slot->storage), work.op.operator_name().name,
                       " read a future whose value was never computed");
  at::Tensor t = at::detail::make_tensor<c10::TensorImpl>(c10::Storage(a.slot->storage), a.keys,
                                                          a.dtype);
  t.unsafeGetTensorImpl()->set_sizes_and_strides(a.sizes, a.strides, a.offset);
  return t;
}

}  // namespace

at::Tensor MakeFuture(c10::IntArrayRef sizes, c10::IntArrayRef strides, c10::ScalarType dtype,
                      c10::Device device, FutureOutput* output) {
  // No memory: Drain points the storage at its slot's memory once filled.
  const size_t nbytes = at::detail::computeStorageNbytes(sizes, strides, c10::elementSize(dtype));
  auto slot = c10::make_intrusive<Slot>();
  auto storage = c10::make_intrusive<c10::StorageImpl>(
      c10::StorageImpl::use_byte_size_t(), c10::SymInt(static_cast<int64_t>(nbytes)),
      SlotDataPtr(nullptr, slot.get(), device), c10::GetAllocator(device.type()),
      /*resizable=*/false);
  storage->release_data_and_set_meta_custom_data_ptr_error_msg_(kNotReady);
  at::Tensor t = at::detail::make_tensor<c10::TensorImpl>(
      c10::Storage(std::move(storage)),
      c10::DispatchKeySet(c10::computeDispatchKey(dtype, c10::kStrided, device)),
      c10::scalarTypeToTypeMeta(dtype));
  t.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides);
  if (output != nullptr) {
    output->slot = c10::weak_intrusive_ptr<Slot>(slot);
    output->nbytes = nbytes;
  }
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

at::Tensor Executor::NewFuture(const graph::TensorMeta& meta, FutureOutput* output) {
  at::Tensor t = MakeFuture(meta.sizes, meta.strides, static_cast<c10::ScalarType>(meta.dtype),
                            c10::Device(static_cast<c10::DeviceType>(meta.device_type),
                                        static_cast<c10::DeviceIndex>(meta.device_index)),
                            output);
  output->meta = &meta;
  unmaterialized_.push_back(t.storage().getWeakStorageImpl());
  return t;
}

void Executor::Submit(Work work) {
  ++submitted_;
  TakeSlotArguments(work);
  if (synchronous_) {
    if (error_) return;
    try {
      Run(work);
      Materialize();
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
  Materialize();
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

void Executor::Materialize() {
  for (const c10::weak_intrusive_ptr<c10::StorageImpl>& weak : unmaterialized_) {
    c10::intrusive_ptr<c10::StorageImpl> storage = weak.lock();
    if (!storage) continue;  // the program dropped this future
    c10::DataPtr& ptr = storage->_mutable_data_ptr_no_checks();
    if (ptr.get() != nullptr || ptr.get_deleter() != &ReleaseSlot) continue;
    Slot* slot = static_cast<Slot*>(ptr.get_context());
    if (!slot->storage) continue;  // its op failed or was skipped: stays guarded
    storage->set_data_ptr_noswap(
        SlotDataPtr(slot->storage.unsafeGetStorageImpl()->mutable_data(), slot, ptr.device()));
    storage->clear_data_ptr_access_error_msg_();
  }
  unmaterialized_.clear();
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
    work = Work{work.op, {}, {}, std::move(work.where), work.location, {}};  // drop references outside the lock
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
  for (const SlotArgument& a : work.slot_args) {
    c10::IValue& v = stack[a.arg];
    if (a.element < 0) {
      v = c10::IValue(Rebuild(a, work));
    } else if (v.isTensorList()) {
      v.toTensorList().set(static_cast<size_t>(a.element), Rebuild(a, work));
    } else {
      v.toList().set(static_cast<size_t>(a.element), c10::IValue(Rebuild(a, work)));
    }
  }
  work.op.callBoxed(&stack);
  size_t k = 0;
  for (const c10::IValue& v : stack) {
    // `own_refs`: references to `result` the stack (and a list's element
    // copy) account for; any more and someone else sees it, so no sharing.
    auto fill = [&](const at::Tensor& result, size_t own_refs) {
      if (k >= work.futures.size()) return;
      FutureOutput& out = work.futures[k++];
      c10::intrusive_ptr<Slot> slot = out.slot.lock();
      if (!slot) return;  // nobody can see this output any more
      const bool same_layout = result.sizes().equals(out.meta->sizes) &&
                               result.strides().equals(out.meta->strides) &&
                               result.storage_offset() == 0 &&
                               result.storage().nbytes() == out.nbytes;
      if (same_layout && result.storage().use_count() == 1 && result.use_count() <= own_refs) {
        slot->storage = result.storage();  // a fresh allocation nobody else sees
        return;
      }
      at::Tensor target = at::empty_strided(out.meta->sizes, out.meta->strides, result.options());
      target.copy_(result);
      slot->storage = target.storage();
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
