#include "runtime/executor.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/ScalarOps.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include "runtime/base/check.h"
#include "runtime/op_arguments.h"

namespace terra::runtime {
namespace {

constexpr const char* kNotReady =
    "Terra: this tensor's value is still being computed by the co-execution executor, and the "
    "program read it through a path Terra does not watch (on a thread other than the one "
    "co-executing, an op on it is such a path; .item(), float(), printing, .tolist(), numpy and "
    "torch.save wait for the value there). Report the call that read it; "
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

// OpenMP's and MKL's per-thread settings, found at run time (absent: there
// is nothing to set).
struct ThreadingLibrary {
  void (*omp_set)(int) = nullptr;
  int (*omp_pause_all)(int) = nullptr;  // omp_pause_resource_all (OpenMP 5)
  int (*mkl_set)(int) = nullptr;         // by value: MKL_Set_Num_Threads_Local

  static const ThreadingLibrary& Get() {
    static const ThreadingLibrary lib;
    return lib;
  }

 private:
  ThreadingLibrary() {
    if (void* gomp = dlopen("libgomp.so.1", RTLD_LAZY | RTLD_NOLOAD)) {
      omp_set = reinterpret_cast<void (*)(int)>(dlsym(gomp, "omp_set_num_threads"));
      omp_pause_all = reinterpret_cast<int (*)(int)>(dlsym(gomp, "omp_pause_resource_all"));
    }
    // MKL's C entry point takes the number by value; the lower-case names
    // are its Fortran entry points, which take a pointer.
    mkl_set = reinterpret_cast<int (*)(int)>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"));
    if (mkl_set == nullptr) {
      if (void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD)) {
        mkl_set = reinterpret_cast<int (*)(int)>(dlsym(torch_cpu, "MKL_Set_Num_Threads_Local"));
      }
    }
  }
};

// The executor thread's intra-op threads: PyTorch's setting, or
// TERRA_EXECUTOR_THREADS. Set once, on the executor thread (OpenMP's and
// MKL's settings are per thread).
void UseIntraOpThreads() {
  (void)at::zeros({1});  // PyTorch's own per-thread initialisation first, or it would undo ours
  int n = std::max(1, at::get_num_threads());
  if (const char* fixed = std::getenv("TERRA_EXECUTOR_THREADS"); fixed != nullptr && *fixed != 0) {
    n = std::max(1, std::atoi(fixed));
  }
  const ThreadingLibrary& lib = ThreadingLibrary::Get();
  if (lib.omp_set != nullptr) lib.omp_set(n);
  if (lib.mkl_set != nullptr) lib.mkl_set(n);
}

// glibc's malloc, once per process before the first executor starts. The
// executor thread allocates results in an arena of its own and the program's
// thread frees most of them; with glibc's default (dynamic) thresholds that
// arena's heap top was trimmed back to the OS and faulted in again, page by
// page, on the next iteration: gpt2 took about twice eager's page faults
// (270k against 142k in 26 iterations). Keeping freed memory up to
// kTrimThreshold (and serving allocations up to 32 MB from the arenas, so
// that they are reused) brings that back to eager's count. Skipped when the
// user tunes malloc through the environment.
void TuneMallocOnce() {
  static const bool tuned = [] {
    const char* tunables = std::getenv("GLIBC_TUNABLES");
    if ((tunables != nullptr && std::string_view(tunables).find("glibc.malloc") != std::string_view::npos) ||
        std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr ||
        std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr ||
        std::getenv("TERRA_KEEP_MALLOC") != nullptr) {
      return false;
    }
#if defined(__GLIBC__)
    constexpr int kMmapThreshold = 32 << 20;   // glibc's maximum on 64-bit
    constexpr int kTrimThreshold = 512 << 20;
    mallopt(M_MMAP_THRESHOLD, kMmapThreshold);
    mallopt(M_TRIM_THRESHOLD, kTrimThreshold);
    return true;
#else
    return false;
#endif
  }();
  (void)tuned;
}

// Results' memory the program's thread let go of, for an executor thread to
// free. glibc serves each thread from its own arena and keeps a small
// per-thread cache: memory allocated on the executor and freed on the
// program's thread overflows that cache and then takes the executor's arena
// lock, against the executor allocating (`perf`: futex wakes from glibc's
// lock, and malloc's slow paths, were a quarter of the program's thread in
// a chain of tiny co-executed ops). Process-wide, since a slot may outlive
// its executor (co-execution restarts on a grown graph); freed at once when
// no executor thread runs.
struct ReturnedMemory {
  std::mutex mu;
  std::vector<c10::Storage> storages;
  std::atomic<size_t> pending{0};
  int executor_threads = 0;

  static ReturnedMemory& Get() {
    static ReturnedMemory* returned = new ReturnedMemory;  // never destroyed: slots die at exit too
    return *returned;
  }
  // Executor thread: frees what was returned.
  void Free() {
    if (pending.load(std::memory_order_relaxed) == 0) return;
    std::vector<c10::Storage> taken;
    {
      std::lock_guard<std::mutex> lock(mu);
      taken.swap(storages);
      pending.store(0, std::memory_order_relaxed);
    }
  }
};

thread_local bool t_executor_thread = false;

}  // namespace

void Slot::ReturnStorage() {
  if (!storage) return;
  if (!t_executor_thread) {
    ReturnedMemory& returned = ReturnedMemory::Get();
    std::unique_lock<std::mutex> lock(returned.mu);
    if (returned.executor_threads > 0) {
      returned.storages.push_back(std::move(storage));
      returned.pending.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  storage = c10::Storage();
}

void ProgramThreadPool::Release() {
  if (released_) return;
  released_ = true;
  threads_ = at::get_num_threads();
  const ThreadingLibrary& lib = ThreadingLibrary::Get();
  if (lib.omp_set != nullptr) lib.omp_set(1);
  if (lib.mkl_set != nullptr) lib.mkl_set(1);
  if (lib.omp_pause_all != nullptr) (void)lib.omp_pause_all(/*omp_pause_soft=*/1);
}

void ProgramThreadPool::Restore() {
  if (!released_) return;
  released_ = false;
  const ThreadingLibrary& lib = ThreadingLibrary::Get();
  if (lib.omp_set != nullptr) lib.omp_set(threads_);
  if (lib.mkl_set != nullptr) lib.mkl_set(0);  // 0: MKL's global setting again
}

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string Where(const Work& work) {
  std::string where = work.where;
  if (where.empty() && work.location != nullptr) where = graph::ShortLocation(*work.location);
  if (work.task) return where;
  if (!work.op) return "backward (replayed as one segment) issued at " + where;
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

// The storages live numpy arrays were handed, each with its count of such
// arrays. Read on every op's ordinary arguments: `size` spares the lock
// while no array is out. The program's array keeps the tensor, and so the
// storage, alive: a key never outlives what it names.
struct Exposures {
  std::mutex mu;
  std::unordered_map<const c10::StorageImpl*, uint32_t> count;
  std::atomic<size_t> size{0};

  static Exposures& Get() {
    static Exposures* exposures = new Exposures();  // used by finalizers at exit
    return *exposures;
  }
  bool Has(const c10::StorageImpl* storage) {
    if (size.load(std::memory_order_acquire) == 0) return false;
    std::lock_guard<std::mutex> lock(mu);
    return count.find(storage) != count.end();
  }
};

// The live asynchronous executors by id, for AwaitOnAnyThread: a slot names
// its writer by id, and an executor that is gone drained first.
struct LiveExecutors {
  std::mutex mu;
  std::unordered_map<uint64_t, const std::atomic<uint64_t>*> tails;

  static LiveExecutors& Get() {
    static LiveExecutors* live = new LiveExecutors();
    return *live;
  }
  // Whether the Works before `count` of executor `id` have run.
  bool Ran(uint64_t id, uint64_t count) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = tails.find(id);
    return it == tails.end() || it->second->load(std::memory_order_acquire) >= count;
  }
};

// Held while a future's storage is made real: the program's thread does it
// in Materialize, another thread in AwaitOnAnyThread.
std::mutex& MaterializeMutex() {
  static std::mutex* mu = new std::mutex();
  return *mu;
}

// Points the program's guarded `storage` at its slot's memory, if the slot
// has it (its op ran and did not fail). Returns the guard's message, moved
// out, for reuse. Under MaterializeMutex.
std::optional<std::string> MakeReal(c10::StorageImpl* storage) {
  c10::DataPtr& ptr = storage->_mutable_data_ptr_no_checks();
  if (ptr.get() != nullptr || ptr.get_deleter() != &ReleaseSlot) return std::nullopt;
  Slot* slot = static_cast<Slot*>(ptr.get_context());
  if (!slot->storage) return std::nullopt;  // its op failed or was skipped: stays guarded
  storage->set_data_ptr_noswap(SlotDataPtr(slot->storage.unsafeGetStorageImpl()->mutable_data(), slot, ptr.device()));
  std::optional<std::string> message = std::move(storage->get_extra_meta().custom_data_ptr_error_msg_);
  storage->clear_data_ptr_access_error_msg_();
  return message;
}

}  // namespace

void AwaitOnAnyThread(const at::Tensor& t) {
  Slot* slot = SlotOf(t);
  if (slot == nullptr) return;
  const uint64_t writer = slot->writer.load(std::memory_order_relaxed);
  const uint64_t written = slot->written.load(std::memory_order_relaxed);
  while (!LiveExecutors::Get().Ran(writer, written)) std::this_thread::sleep_for(std::chrono::microseconds(50));
  std::lock_guard<std::mutex> lock(MaterializeMutex());
  MakeReal(t.storage().unsafeGetStorageImpl());
}

uintptr_t ExposeMemory(const at::Tensor& t) {
  if (!t.defined() || !t.has_storage()) return 0;
  const c10::StorageImpl* storage = t.storage().unsafeGetStorageImpl();
  Exposures& e = Exposures::Get();
  std::lock_guard<std::mutex> lock(e.mu);
  ++e.count[storage];
  e.size.store(e.count.size(), std::memory_order_release);
  return reinterpret_cast<uintptr_t>(storage);
}

void EndExposure(uintptr_t key) {
  if (key == 0) return;
  Exposures& e = Exposures::Get();
  std::lock_guard<std::mutex> lock(e.mu);
  auto it = e.count.find(reinterpret_cast<const c10::StorageImpl*>(key));
  if (it == e.count.end()) return;
  if (--it->second == 0) e.count.erase(it);
  e.size.store(e.count.size(), std::memory_order_release);
}

namespace {

// DirectMemory, given `t`'s slot (SlotOf(t)), which the caller has.
bool DirectMemoryIn(const at::Tensor& t, const Slot* slot) {
  if (!t.defined() || !t.has_storage() || !t.device().is_cpu()) return false;
  c10::StorageImpl* storage = t.storage().unsafeGetStorageImpl();
  if (storage == nullptr) return false;
  // A future's memory is exposed only once real (numpy drains first).
  const bool real = storage->_mutable_data_ptr_no_checks().get() != nullptr;
  if (real && Exposures::Get().Has(storage)) return true;
  return real && storage->allocator() == nullptr && slot == nullptr;
}

}  // namespace

bool DirectMemory(const at::Tensor& t) { return DirectMemoryIn(t, SlotOf(t)); }

namespace {

// Notes future `t` (in `slot`) as argument `arg` (list element `element`)
// of `work`, built in place: a ring entry's vector keeps its capacity, and
// moving a layout's small vectors costs more than filling them.
void AddSlotArgument(Work& work, const at::Tensor& t, Slot* slot, uint32_t arg, int32_t element) {
  SlotArgument& a = work.slot_args.emplace_back();
  a.arg = arg;
  a.element = element;
  a.slot = c10::intrusive_ptr<Slot>::reclaim_copy(slot);
  a.layout.Assign(t);
}

// The value of wrapped number `t` (a Python number an op took as a tensor),
// if it is a 0-dim CPU one of the types Python numbers become; read without
// an op, since the program's thread may be inside an intercepted one.
std::optional<c10::Scalar> WrappedValue(const at::Tensor& t) {
  if (!t.device().is_cpu() || t.dim() != 0 || t.storage().data() == nullptr) {
    return std::nullopt;
  }
  const void* p = static_cast<const char*>(t.storage().data()) + t.storage_offset() * t.dtype().itemsize();
  switch (t.scalar_type()) {
    case c10::ScalarType::Double: return c10::Scalar(*static_cast<const double*>(p));
    case c10::ScalarType::Long: return c10::Scalar(*static_cast<const int64_t*>(p));
    case c10::ScalarType::Bool: return c10::Scalar(*static_cast<const bool*>(p));
    case c10::ScalarType::ComplexDouble: return c10::Scalar(*static_cast<const c10::complex<double>*>(p));
    default: return std::nullopt;
  }
}

}  // namespace

at::Tensor CopyNow(const at::Tensor& t) {
  const size_t item = t.dtype().itemsize();
  const size_t nbytes = at::detail::computeStorageNbytes(t.sizes(), t.strides(), item);
  c10::Allocator* allocator = c10::GetCPUAllocator();
  c10::DataPtr data = allocator->allocate(nbytes);
  if (nbytes != 0) {
    std::memcpy(data.get(), static_cast<const char*>(t.storage().data()) + t.storage_offset() * item, nbytes);
  }
  auto storage = c10::make_intrusive<c10::StorageImpl>(c10::StorageImpl::use_byte_size_t(),
                                                       static_cast<int64_t>(nbytes), std::move(data),
                                                       allocator, /*resizable=*/false);
  at::Tensor copy = at::detail::make_tensor<c10::TensorImpl>(c10::Storage(std::move(storage)),
                                                             t.key_set(), t.dtype());
  copy.unsafeGetTensorImpl()->set_sizes_and_strides(t.sizes(), t.strides(), 0);
  return copy;
}

// Replaces every argument in a future's memory by a SlotArgument (and a
// placeholder on the stack): the Work then holds no reference to the
// program's tensor or storage. Tensor lists are copied first. Notes which
// slots the Work writes, and which ordinary storages it touches.
uint64_t Executor::WrittenArguments(const c10::OperatorHandle& op) {
  auto [it, added] = written_arguments_.try_emplace(&op.operator_name(), 0);
  if (added) {
    const auto& args = op.schema().arguments();
    for (size_t i = 0; i < args.size(); ++i) {
      if (args[i].alias_info() != nullptr && args[i].alias_info()->isWrite()) {
        it->second |= i < 64 ? uint64_t{1} << i : ~uint64_t{0};
      }
    }
  }
  return it->second;
}

void Executor::TakeSlotArguments(Work& work, uint64_t seq) {
  work.written_args = WrittenArguments(*work.op);
  // Inputs from Python are fed by value: memory the program can write
  // behind ATen's back (DirectMemory, a future's included) is copied now,
  // unless the op writes it or a queued Work already holds it (then the
  // executor's program order decides, as for any ordinary memory; the
  // co-executor runs such writes on the program's thread).
  // What the Work holds in place of `t`: nothing new for ordinary memory
  // (held as given, and noted), an undefined placeholder for a future's
  // memory (its SlotArgument), a copy for memory fed by value.
  auto adopt = [&](const at::Tensor& t, uint32_t i, int32_t element) -> std::optional<at::Tensor> {
    Slot* slot = SlotOf(t);
    if (!synchronous_ && !work.Writes(i) && DirectMemoryIn(t, slot) && !MayBeQueued(t)) {
      ++fed_by_value_;
      if (commit_observer_) work.fed.push_back({i, element, t.storage(), TensorLayout::Of(t)});
      return CopyNow(t);
    }
    if (slot != nullptr) {
      if (work.Writes(i)) slot->SetWriter(id_, seq);
      AddSlotArgument(work, t, slot, i, element);
      return at::Tensor();
    }
    if (!t.defined() || !t.has_storage()) return std::nullopt;
    if (t.unsafeGetTensorImpl()->is_wrapped_number()) {
      // A Python number the op took as a tensor (`y * 0.5`) is the op's
      // own: made for this call, never seen by the program, so never read
      // or written by anything after it. Held as its value (Work::wrapped)
      // once the commit observer has seen the tensor.
      if (element < 0) {
        if (std::optional<c10::Scalar> value = WrappedValue(t)) work.wrapped.push_back({i, t.scalar_type(), *value});
      }
      return std::nullopt;
    }
    Reference(t, seq);
    return std::nullopt;
  };
  for (uint32_t i = 0; i < work.inputs.size(); ++i) {
    c10::IValue& v = work.inputs[i];
    if (v.isTensor()) {
      if (std::optional<at::Tensor> held = adopt(v.toTensor(), i, -1)) v = c10::IValue(std::move(*held));
    } else if (v.isTensorList()) {
      c10::List<at::Tensor> list = v.toTensorList();
      bool copied = false;  // the program's list is never written: copied first
      for (size_t j = 0; j < list.size(); ++j) {
        std::optional<at::Tensor> held = adopt(list.get(j), i, static_cast<int32_t>(j));
        if (!held) continue;
        if (!copied) {
          list = list.copy();
          copied = true;
        }
        list.set(j, std::move(*held));
      }
      if (copied) v = c10::IValue(std::move(list));
    } else if (v.isList()) {  // Tensor?[] (index, index_put_)
      c10::List<c10::IValue> list = v.toList();
      bool copied = false;
      for (size_t j = 0; j < list.size(); ++j) {
        const c10::IValue e = list.get(j);
        if (!e.isTensor()) continue;
        std::optional<at::Tensor> held = adopt(e.toTensor(), i, static_cast<int32_t>(j));
        if (!held) continue;
        if (!copied) {
          list = list.copy();
          copied = true;
        }
        list.set(j, held->defined() ? c10::IValue(std::move(*held)) : c10::IValue());
      }
      if (copied) v = c10::IValue(std::move(list));
    }
  }
}

namespace {

// The executor's own tensor for a slot argument (executor thread).
at::Tensor Rebuild(const SlotArgument& a, const Work& work) {
  TERRA_INTERNAL_CHECK(static_cast<bool>(a.slot->storage), work.op->operator_name().name,
                       " read a future whose value was never computed");
  return a.layout.On(a.slot->storage);
}

// Where a result goes as a value (a slot's, or a segment's internal one): the
// result's own storage when it has the recorded layout and nobody else sees
// it (`own_refs`: the references the stack accounts for), else a copy.
c10::Storage ValueStorage(const at::Tensor& result, const graph::TensorMeta& meta, size_t nbytes,
                          size_t own_refs) {
  // A future's readers were given `meta`'s dtype when the op was issued; a
  // result of another dtype would be read as the wrong bits.
  TERRA_INTERNAL_CHECK(static_cast<uint8_t>(result.scalar_type()) == meta.dtype, "a result of dtype ",
                       result.scalar_type(), " for a future of dtype ", static_cast<c10::ScalarType>(meta.dtype));
  const bool same_layout = result.sizes().equals(meta.sizes) && result.strides().equals(meta.strides) &&
                           result.storage_offset() == 0 && result.storage().nbytes() == nbytes;
  if (same_layout && result.storage().use_count() == 1 && result.use_count() <= own_refs) {
    return result.storage();  // a fresh allocation nobody else sees
  }
  at::Tensor target = at::empty_strided(meta.sizes, meta.strides, result.options());
  target.copy_(result);
  return target.storage();
}

}  // namespace

TensorLayout TensorLayout::Of(const at::Tensor& t) {
  TensorLayout l;
  l.Assign(t);
  return l;
}

void TensorLayout::Assign(const at::Tensor& t) {
  sizes.assign(t.sizes().begin(), t.sizes().end());
  strides.assign(t.strides().begin(), t.strides().end());
  offset = t.storage_offset();
  keys = t.key_set() - c10::autograd_dispatch_keyset_with_ADInplaceOrView;
  dtype = t.dtype();
  wrapped_number = t.unsafeGetTensorImpl()->is_wrapped_number();
}

at::Tensor TensorLayout::On(c10::Storage storage, int64_t shift) const {
  at::Tensor t = at::detail::make_tensor<c10::TensorImpl>(std::move(storage), keys, dtype);
  t.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, offset + shift);
  if (wrapped_number) t.unsafeGetTensorImpl()->set_wrapped_number(true);
  return t;
}

at::Tensor MakeFuture(c10::IntArrayRef sizes, c10::IntArrayRef strides, c10::ScalarType dtype,
                      c10::Device device, FutureOutput* output, std::string* not_ready) {
  // No memory: Drain points the storage at its slot's memory once filled.
  const size_t nbytes = at::detail::computeStorageNbytes(sizes, strides, c10::elementSize(dtype));
  auto slot = c10::make_intrusive<Slot>();
  auto storage = c10::make_intrusive<c10::StorageImpl>(
      c10::StorageImpl::use_byte_size_t(), c10::SymInt(static_cast<int64_t>(nbytes)),
      SlotDataPtr(nullptr, slot.get(), device), c10::GetAllocator(device.type()),
      /*resizable=*/false);
  storage->release_data_and_set_meta_custom_data_ptr_error_msg_(
      not_ready != nullptr && !not_ready->empty() ? std::move(*not_ready) : std::string(kNotReady));
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
    : synchronous_(synchronous),
      around_wait_(std::move(around_wait)),
      id_([] {
        static std::atomic<uint64_t> next{1};
        return next.fetch_add(1);
      }()),
      ring_(synchronous ? 1 : kRing) {
  if (!synchronous_) {
    program_pool_.Release();
    TuneMallocOnce();
    thread_ = std::thread([this] { Loop(); });
    LiveExecutors& live = LiveExecutors::Get();
    std::lock_guard<std::mutex> lock(live.mu);
    live.tails.emplace(id_, &tail_);
  }
}

Executor::~Executor() {
  if (!synchronous_) {
    const uint64_t end = head_.load();
    WaitUntilRun(end);
    {
      LiveExecutors& live = LiveExecutors::Get();
      std::lock_guard<std::mutex> lock(live.mu);
      live.tails.erase(id_);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
    }
    wake_executor_.notify_all();
    thread_.join();
    program_pool_.Restore();
  }
}

void Executor::WaitUntilRun(uint64_t count) {
  auto done = [&] { return tail_.load() >= count; };
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
    // The executor wakes us once, when its count reaches ours: not after
    // every Work, which would cost a futex wake and two context switches
    // each, on the core the executor's kernels want.
    program_wants_.store(count);
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
                            output, spare_messages_.empty() ? nullptr : &spare_messages_.back());
  if (!spare_messages_.empty()) spare_messages_.pop_back();
  output->meta = &meta;
  const uint64_t seq = head_.load(std::memory_order_relaxed);  // the Work being filled
  SlotOf(t)->SetWriter(id_, seq);
  unmaterialized_.emplace_back(seq, t.storage().getWeakStorageImpl());
  return t;
}

Work& Executor::Next() {
  if (synchronous_) return ring_[0];
  const uint64_t head = head_.load(std::memory_order_relaxed);
  if (head - tail_.load(std::memory_order_acquire) >= kRing) {
    WaitUntilRun(head - kRing + 1);  // the program is far ahead
  }
  return ring_[head & (kRing - 1)];
}

void Executor::TakeArguments(Work& work, uint64_t seq) {
  if (work.task) {
    ForEachTensorArgument(work.inputs, [&](const at::Tensor& t, uint32_t, int32_t) {
      TERRA_INTERNAL_CHECK(SlotOf(t) == nullptr, work.where, ": a task of the program's holds a future");
      if (t.has_storage()) Reference(t, seq);
      return true;
    });
    return;
  }
  if (work.segment) {
    NoteSegmentExternals(work, seq);
  } else {
    TakeSlotArguments(work, seq);
  }
  if (commit_observer_) {
    commit_observer_(work);
    work.fed.clear();
  }
  // After the observer (a backward segment records the wrapped numbers as
  // the tensors the op received): the program's tensors go, here.
  for (const Work::Wrapped& w : work.wrapped) work.inputs[w.arg] = c10::IValue();
}

void Executor::Commit() {
  ++submitted_;
  if (synchronous_) {
    Work& work = ring_[0];
    TakeArguments(work, 0);
    referenced_.clear();  // it runs now
    if (!error_) {
      const double start = Now();
      try {
        Run(work);
        busy_ns_.fetch_add(static_cast<uint64_t>((Now() - start) * 1e9));
        Materialize(1);
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
  TakeArguments(ring_[head & (kRing - 1)], head);
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
  uint64_t end = 1;  // synchronous: every Work has run (sequence numbers are 0)
  if (!synchronous_) {
    const double start = Now();
    end = head_.load(std::memory_order_relaxed);
    WaitUntilRun(end);
    drain_wait_s_ += Now() - start;
  }
  referenced_.clear();
  Materialize(end);
  std::lock_guard<std::mutex> lock(mu_);
  if (error_) ThrowError();
}

uint64_t Executor::WrittenBy(const at::Tensor& t) const {
  if (!t.defined() || !t.has_storage()) return 0;
  // A writer of another (earlier, drained) executor has run.
  if (const Slot* slot = SlotOf(t)) {
    return slot->writer.load(std::memory_order_relaxed) == id_ ? slot->written.load(std::memory_order_relaxed) : 0;
  }
  // Ordinary memory: the last Work that touches it (reads included; cheap to
  // over-wait, and such reads are rare).
  auto it = referenced_.find(t.storage().unsafeGetStorageImpl());
  return it == referenced_.end() ? 0 : it->second;
}

void Executor::AwaitValues(c10::ArrayRef<c10::IValue> values) {
  uint64_t needed = 0;
  ForEachTensorArgument(values, [&](const at::Tensor& t, uint32_t, int32_t) {
    needed = std::max(needed, WrittenBy(t));
    return true;
  });
  uint64_t done = 1;
  if (!synchronous_) {
    done = tail_.load();
    if (done < needed) {
      const double start = Now();
      WaitUntilRun(needed);
      drain_wait_s_ += Now() - start;
      done = tail_.load();
    }
  }
  if (failed_.load()) {
    Drain();  // the Works after the failure are skipped; then it throws
    return;
  }
  Materialize(done);
  if (synchronous_) {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_) ThrowError();
  }
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

void Executor::Materialize(uint64_t done) {
  size_t i = materialized_;
  if (i == unmaterialized_.size() || unmaterialized_[i].first >= done) return;  // nothing ran since
  std::lock_guard<std::mutex> lock(MaterializeMutex());
  for (; i < unmaterialized_.size() && unmaterialized_[i].first < done; ++i) {
    c10::intrusive_ptr<c10::StorageImpl> storage = unmaterialized_[i].second.lock();
    if (!storage) continue;  // the program dropped this future
    // The guard's message goes back to the next future: one allocation of
    // it per future less.
    std::optional<std::string> message = MakeReal(storage.get());
    if (message && spare_messages_.size() < kSpareMessages) spare_messages_.push_back(std::move(*message));
  }
  if (i == unmaterialized_.size()) {
    unmaterialized_.clear();
    materialized_ = 0;
  } else if (i > 4096 && i * 2 > unmaterialized_.size()) {
    unmaterialized_.erase(unmaterialized_.begin(), unmaterialized_.begin() + static_cast<std::ptrdiff_t>(i));
    materialized_ = 0;
  } else {
    materialized_ = i;
  }
}

void Executor::Reference(const c10::StorageImpl* storage, uint64_t seq) {
  referenced_[storage] = seq + 1;
  if (referenced_.size() <= prune_referenced_at_) return;
  // Drops the storages whose last Work has run. Amortized: what is still
  // queued is not scanned again before the map has doubled.
  const uint64_t done = tail_.load(std::memory_order_acquire);
  for (auto it = referenced_.begin(); it != referenced_.end();) {
    it = it->second <= done ? referenced_.erase(it) : std::next(it);
  }
  prune_referenced_at_ = std::max<size_t>(1024, 2 * referenced_.size());
}

bool Executor::MayBeQueued(const at::Tensor& t) const {
  if (!t.defined() || !t.has_storage()) return false;
  auto it = referenced_.find(t.storage().unsafeGetStorageImpl());
  return it != referenced_.end() && it->second > tail_.load(std::memory_order_acquire);
}

double Executor::busy_seconds() const {
  return static_cast<double>(busy_ns_.load(std::memory_order_relaxed)) * 1e-9;
}

void Executor::Loop() {
  pthread_setname_np(pthread_self(), "terra-executor");  // for top, perf and gdb
  UseIntraOpThreads();
  t_executor_thread = true;
  ReturnedMemory& returned = ReturnedMemory::Get();
  {
    std::lock_guard<std::mutex> lock(returned.mu);
    ++returned.executor_threads;
  }
  uint64_t tail = 0;
  while (true) {
    returned.Free();
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
        returned.Free();  // before a nap of unknown length
        std::unique_lock<std::mutex> lock(mu_);
        executor_parked_.store(true);
        wake_executor_.wait(lock, [&] { return stop_.load() || head_.load() != tail; });
        executor_parked_.store(false);
        if (head_.load() == tail) {  // stopping, nothing queued
          lock.unlock();
          std::vector<c10::Storage> left;
          {
            std::lock_guard<std::mutex> returned_lock(returned.mu);
            if (--returned.executor_threads == 0) {
              left.swap(returned.storages);  // freed here: no other executor thread is left
              returned.pending.store(0, std::memory_order_relaxed);
            }
          }
          return;
        }
      }
      continue;
    }
    Work& work = ring_[tail & (kRing - 1)];
    if (!failed_.load(std::memory_order_relaxed)) {
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
    if (program_parked_.load() && tail >= program_wants_.load()) {
      { std::lock_guard<std::mutex> lock(mu_); }
      wake_program_.notify_all();
    }
  }
}

void Executor::NoteSegmentExternals(Work& work, uint64_t seq) {
  // Every piece notes every external: a read by the program waits for the
  // last piece committed before it, which is where program order puts it.
  const BackwardSegment& segment = *work.segment;
  for (size_t i = 0; i < work.run->externals.size(); ++i) {
    SegmentExternal& e = work.run->externals[i];
    if (e.slot) {
      if (segment.external_written[i] != 0) e.slot->SetWriter(id_, seq);
    } else if (e.storage) {
      Reference(e.storage.unsafeGetStorageImpl(), seq);
    }
  }
}

void Executor::RunSegment(Work& work) {
  const BackwardSegment& segment = *work.segment;
  std::vector<c10::Storage>& values = work.run->values;
  if (values.empty()) values.resize(segment.values.size());
  c10::SmallVector<uint8_t, 16> lists_copied;
  for (uint32_t index = work.segment_begin; index < work.segment_end; ++index) {
    const SegmentOp& op = segment.ops[index];
    torch::jit::Stack stack = op.inputs;
    lists_copied.assign(stack.size(), 0);
    for (const SegmentArgument& a : op.tensors) {
      c10::Storage storage;
      int64_t shift = 0;
      if (a.external) {
        const SegmentExternal& e = work.run->externals[a.value];
        storage = e.slot ? e.slot->storage : e.storage;
        shift = e.offset;
      } else {
        storage = values[a.value];
      }
      TERRA_INTERNAL_CHECK(static_cast<bool>(storage), op.op.operator_name().name,
                           " in a replayed backward read a value never computed");
      at::Tensor t = a.layout.On(std::move(storage), shift);
      c10::IValue& v = stack[a.arg];
      if (a.element < 0) {
        v = c10::IValue(std::move(t));
        continue;
      }
      // The recorded list is shared by every replay: each gets its own copy.
      if (lists_copied[a.arg] == 0) {
        lists_copied[a.arg] = 1;
        v = v.isTensorList() ? c10::IValue(v.toTensorList().copy()) : c10::IValue(v.toList().copy());
      }
      if (v.isTensorList()) {
        v.toTensorList().set(static_cast<size_t>(a.element), std::move(t));
      } else {
        v.toList().set(static_cast<size_t>(a.element), c10::IValue(std::move(t)));
      }
    }
    try {
      op.op.callBoxed(&stack);
    } catch (const std::exception& e) {
      throw std::runtime_error(op.op.operator_name().name +
                               (op.location != nullptr ? " (for " + graph::ShortLocation(*op.location) + ")" : "") +
                               ": " + e.what());
    }
    // The results, as Run puts them into slots.
    size_t k = 0;
    auto keep = [&](const at::Tensor& result, size_t own_refs) {
      if (!result.defined() || k >= op.outputs.size()) return;
      const uint32_t id = op.outputs[k++];
      values[id] = ValueStorage(result, segment.values[id].meta, segment.values[id].nbytes, own_refs);
    };
    for (const c10::IValue& v : stack) {
      if (v.isTensor()) {
        keep(v.toTensor(), 1);
      } else if (v.isTensorList()) {
        for (const at::Tensor& t : v.toTensorList()) keep(t, 2);
      }
    }
    stack.clear();
    for (uint32_t id : op.frees) values[id] = c10::Storage();
  }
  for (const auto& [id, index] : work.segment_futures) {
    if (c10::intrusive_ptr<Slot> slot = work.futures[index].slot.lock()) slot->storage = values[id];
  }
}

void Executor::Run(Work& work) {
  // Autograd ran on the program's thread when the op was issued.
  c10::impl::ExcludeDispatchKeyGuard below_autograd(c10::autograd_dispatch_keyset_with_ADInplaceOrView);
  if (work.task) {
    work.task();
    return;
  }
  if (work.segment) {
    RunSegment(work);
    return;
  }
  // In place: the ring entry keeps the vector's memory for the next op the
  // program's thread moves in (moved out, it was allocated there and freed
  // here once per op).
  torch::jit::Stack& stack = work.inputs;
  for (const auto& [slot, meta] : work.fresh) {
    if (slot->storage) continue;
    slot->storage = at::empty_strided(meta->sizes, meta->strides,
                                      at::TensorOptions()
                                          .dtype(static_cast<c10::ScalarType>(meta->dtype))
                                          .device(static_cast<c10::DeviceType>(meta->device_type),
                                                  static_cast<c10::DeviceIndex>(meta->device_index)))
                        .storage();
  }
  for (const Work::Wrapped& w : work.wrapped) {
    at::Tensor number = at::detail::scalar_tensor_static(w.value, w.dtype, at::kCPU);
    number.unsafeGetTensorImpl()->set_wrapped_number(true);
    stack[w.arg] = c10::IValue(std::move(number));
  }
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
      // An undefined return (an output mask's false) has no future.
      if (!result.defined() || k >= work.futures.size()) return;
      FutureOutput& out = work.futures[k++];
      c10::intrusive_ptr<Slot> slot = out.slot.lock();
      if (!slot) return;  // nobody can see this output any more
      slot->storage = ValueStorage(result, *out.meta, out.nbytes, own_refs);
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
