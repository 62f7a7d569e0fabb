#include "runtime/executor.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <unordered_set>
#include <utility>

#include "runtime/base/check.h"

namespace terra::runtime {
namespace {

constexpr const char* kNotReady =
    "Terra: this tensor's value is still being computed by the co-execution executor, and the "
    "program read it through a path Terra does not watch. Report the call that read it; "
    "meanwhile run with --mode trace (or terra.enable(\"trace\")) to avoid co-execution.";


// How long a waiting thread spins before it parks. The program's thread
// spins holding the GIL, so briefly.
constexpr auto kSpinProgram = std::chrono::microseconds(30);
constexpr auto kSpinExecutor = std::chrono::microseconds(200);

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// The executor thread's intra-op threads. While the program's thread runs
// Python it needs a core of its own, so the executor's kernels use one
// thread fewer than PyTorch's setting; while the program waits in Drain, they
// use them all. TERRA_EXECUTOR_THREADS fixes the number instead. OpenMP's
// and MKL's per-thread settings are found at run time (absent: nothing to
// set; the kernels use PyTorch's setting).
class IntraOpThreads {
 public:
  IntraOpThreads() {
    (void)at::zeros({1});  // PyTorch's own per-thread initialisation first, or it would undo ours
    full_ = std::max(1, at::get_num_threads());
    shared_ = std::max(1, full_ - 1);
    if (const char* fixed = std::getenv("TERRA_EXECUTOR_THREADS"); fixed != nullptr && *fixed != 0) {
      full_ = shared_ = std::max(1, std::atoi(fixed));
    }
    if (void* gomp = dlopen("libgomp.so.1", RTLD_LAZY | RTLD_NOLOAD)) {
      omp_set_ = reinterpret_cast<void (*)(int)>(dlsym(gomp, "omp_set_num_threads"));
    }
    // MKL's C entry point takes the number by value; the lower-case names
    // are its Fortran entry points, which take a pointer.
    mkl_set_ = reinterpret_cast<int (*)(int)>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"));
    if (mkl_set_ == nullptr) {
      if (void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD)) {
        mkl_set_ = reinterpret_cast<int (*)(int)>(dlsym(torch_cpu, "MKL_Set_Num_Threads_Local"));
      }
    }
  }

  void Use(bool program_waiting) {
    const int n = program_waiting ? full_ : shared_;
    if (n == current_) return;
    current_ = n;
    if (omp_set_ != nullptr) omp_set_(n);
    if (mkl_set_ != nullptr) mkl_set_(n);
  }

 private:
  int full_ = 1;
  int shared_ = 1;
  int current_ = 0;
  void (*omp_set_)(int) = nullptr;
  int (*mkl_set_)(int) = nullptr;
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string Where(const Work& work) {
  std::string where = work.where;
  if (where.empty() && work.location != nullptr) where = graph::ShortLocation(*work.location);
  return work.op->operator_name().name + " issued at " + where;
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

}  // namespace

// The slot whose memory `t` lives in, or null (ordinary memory, or none).
Slot* SlotOf(const at::Tensor& t) {
  if (!t.defined() || !t.has_storage()) return nullptr;
  c10::StorageImpl* storage = t.storage().unsafeGetStorageImpl();
  if (storage == nullptr) return nullptr;
  const c10::DataPtr& ptr = storage->_mutable_data_ptr_no_checks();
  return ptr.get_deleter() == &ReleaseSlot ? static_cast<Slot*>(ptr.get_context()) : nullptr;
}

namespace {

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
void TakeSlotArguments(Work& work, std::unordered_set<const c10::StorageImpl*>* real) {
  auto note_real = [&](const at::Tensor& t) {
    if (t.defined() && t.has_storage()) real->insert(t.storage().unsafeGetStorageImpl());
  };
  for (uint32_t i = 0; i < work.inputs.size(); ++i) {
    c10::IValue& v = work.inputs[i];
    if (v.isTensor()) {
      if (Slot* slot = SlotOf(v.toTensor())) {
        work.slot_args.push_back(SlotArgumentOf(v.toTensor(), slot, i, -1));
        v = c10::IValue(at::Tensor());
      } else {
        note_real(v.toTensor());
      }
    } else if (v.isTensorList()) {
      c10::List<at::Tensor> list = v.toTensorList();
      bool copied = false;
      for (size_t j = 0; j < list.size(); ++j) {
        const at::Tensor t = list.get(j);
        Slot* slot = SlotOf(t);
        if (slot == nullptr) {
          note_real(t);
          continue;
        }
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
        if (slot == nullptr) {
          note_real(e.toTensor());
          continue;
        }
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
  TERRA_INTERNAL_CHECK(static_cast<bool>(a.slot->storage), work.op->operator_name().name,
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
    : synchronous_(synchronous), around_wait_(std::move(around_wait)), ring_(synchronous ? 1 : kRing) {
  if (!synchronous_) thread_ = std::thread([this] { Loop(); });
}

Executor::~Executor() {
  if (!synchronous_) {
    const uint64_t end = head_.load();
    WaitFor([&] { return tail_.load() == end; });
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
    }
    wake_executor_.notify_all();
    thread_.join();
  }
}

void Executor::WaitFor(const std::function<bool()>& done) {
  if (done()) return;
  // Most waits are short (the executor finishes a few ops): spin first,
  // holding the GIL, rather than pay two futex calls and two context switches.
  const auto spin_until = std::chrono::steady_clock::now() + kSpinProgram;
  for (int i = 1;; ++i) {
    CpuRelax();
    if (done()) return;
    if ((i & 63) == 0 && std::chrono::steady_clock::now() > spin_until) break;
  }
  auto park = [&] {
    std::unique_lock<std::mutex> lock(mu_);
    program_parked_.store(true);
    wake_program_.wait(lock, done);
    program_parked_.store(false);
  };
  if (around_wait_) {
    around_wait_(park);
  } else {
    park();
  }
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

Work& Executor::Next() {
  if (synchronous_) return ring_[0];
  const uint64_t head = head_.load(std::memory_order_relaxed);
  if (head - tail_.load(std::memory_order_acquire) >= kRing) {
    WaitFor([&] { return head - tail_.load() < kRing; });  // the program is far ahead
  }
  return ring_[head & (kRing - 1)];
}

void Executor::Commit() {
  ++submitted_;
  if (synchronous_) {
    Work& work = ring_[0];
    TakeSlotArguments(work, &referenced_);
    if (!error_) {
      const double start = Now();
      try {
        Run(work);
        busy_ns_.fetch_add(static_cast<uint64_t>((Now() - start) * 1e9));
        Materialize();
      } catch (...) {
        error_ = std::current_exception();
        error_where_ = Where(work);
      }
    }
    work.Clear();
    if (error_) ThrowError();  // the error surfaces at the issuing line
    return;
  }
  const uint64_t head = head_.load(std::memory_order_relaxed);
  TakeSlotArguments(ring_[head & (kRing - 1)], &referenced_);
  head_.store(head + 1);  // seq_cst: ordered before the parked check below
  if (executor_parked_.load()) {
    { std::lock_guard<std::mutex> lock(mu_); }  // the executor is waiting or will see head_
    wake_executor_.notify_one();
  }
}

void Executor::Submit(Work work) {
  Work& entry = Next();
  entry = std::move(work);
  Commit();
}

void Executor::Drain() {
  if (!synchronous_) {
    const double start = Now();
    const uint64_t end = head_.load(std::memory_order_relaxed);
    program_waiting_.store(true, std::memory_order_relaxed);
    WaitFor([&] { return tail_.load() == end; });
    program_waiting_.store(false, std::memory_order_relaxed);
    drain_wait_s_ += Now() - start;
  }
  referenced_.clear();
  Materialize();
  std::lock_guard<std::mutex> lock(mu_);
  if (error_) ThrowError();
}

void Executor::ThrowError() {
  std::exception_ptr error = std::exchange(error_, nullptr);
  std::string where = std::move(error_where_);
  failed_.store(false);
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    TERRA_CHECK(false, "the co-executed operation ", where, " failed: ", e.what());
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

bool Executor::MayBeQueued(const at::Tensor& t) const {
  return t.defined() && t.has_storage() && referenced_.count(t.storage().unsafeGetStorageImpl()) != 0;
}

double Executor::busy_seconds() const {
  return static_cast<double>(busy_ns_.load(std::memory_order_relaxed)) * 1e-9;
}

void Executor::Loop() {
  IntraOpThreads threads;
  uint64_t tail = 0;
  while (true) {
    if (head_.load(std::memory_order_acquire) == tail) {
      // Idle: spin a while (the program issues the next op within
      // microseconds), then park until Commit wakes us.
      const auto spin_until = std::chrono::steady_clock::now() + kSpinExecutor;
      bool more = false;
      for (int i = 1; !more; ++i) {
        CpuRelax();
        more = head_.load(std::memory_order_acquire) != tail;
        if ((i & 63) == 0 && std::chrono::steady_clock::now() > spin_until) break;
      }
      if (!more) {
        std::unique_lock<std::mutex> lock(mu_);
        executor_parked_.store(true);
        wake_executor_.wait(lock, [&] { return stop_.load() || head_.load() != tail; });
        executor_parked_.store(false);
        if (head_.load() == tail) return;  // stopping, nothing queued
      }
      continue;
    }
    Work& work = ring_[tail & (kRing - 1)];
    if (!failed_.load(std::memory_order_relaxed)) {
      threads.Use(program_waiting_.load(std::memory_order_relaxed));
      const double start = Now();
      try {
        Run(work);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) {
          error_ = std::current_exception();
          error_where_ = Where(work);
        }
        failed_.store(true);
      }
      busy_ns_.fetch_add(static_cast<uint64_t>((Now() - start) * 1e9), std::memory_order_relaxed);
    }
    work.Clear();  // drops the references here, on this thread
    tail_.store(++tail);  // seq_cst: ordered before the parked check below
    if (program_parked_.load()) {
      { std::lock_guard<std::mutex> lock(mu_); }
      wake_program_.notify_all();
    }
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
  work.op->callBoxed(&stack);
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
  TERRA_INTERNAL_CHECK(k == work.futures.size(), work.op->operator_name().name, " returned ", k,
                       " tensors for ", work.futures.size(), " futures");
}

}  // namespace terra::runtime
