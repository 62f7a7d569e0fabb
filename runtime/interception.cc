#include "runtime/interception.h"

#include <c10/core/DispatchKey.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace terra::runtime {
namespace {

using c10::BackendComponent;
using c10::DispatchKey;
using c10::DispatchKeySet;

// Terra's key. Including it in the thread-local set adds two bits: the Dense
// functionality bit and the PrivateUse3 backend bit. The backend bit is the
// highest one set, so every per-backend functionality of the op (Dense,
// Autograd, Sparse, ...) resolves to its PrivateUse3 variant. PrivateUse1 is
// left to device plugins.
constexpr DispatchKey kKey = DispatchKey::PrivateUse3;
constexpr BackendComponent kBackendBit = BackendComponent::PrivateUse3Bit;
// kKey's variants for the other per-backend functionalities.
constexpr DispatchKey kVariants[] = {kKey, DispatchKey::SparsePrivateUse3, DispatchKey::SparseCsrPrivateUse3,
                                     DispatchKey::QuantizedPrivateUse3, DispatchKey::NestedTensorPrivateUse3};

// The functionalities at or below the per-backend ones (Dense .. NestedTensor)
// with every backend bit. Everything above BackendSelect (autograd,
// ADInplaceOrView, Functionalize, Python, ...) already ran before the op
// reached us, so it must not run again on the redispatch.
constexpr DispatchKeySet kBelowBackendSelect(DispatchKeySet::FULL_AFTER,
                                             DispatchKey::BackendSelect);

thread_local OpObserver* tls_observer = nullptr;
std::atomic<OpObserver*> fallback_observer{nullptr};
std::atomic<size_t> unobserved_ops{0};

// Strips both bits of kKey: clearing only the key (what
// tls_set_dispatch_key_included(kKey, false) and the include guard's
// destructor do) removes the Dense bit and leaves the backend bit, so ops
// keep routing to PrivateUse3 variants.
DispatchKeySet StripKey(DispatchKeySet set) { return set.remove(kKey).remove_backend(kBackendBit); }

// The boxed kernel for every intercepted op (fallback and direct
// registrations alike). Traps avoided:
// - It never calls op.callBoxed or redispatches with the unchanged key set:
//   either lands back here and recurses until the stack overflows.
// - It never uses ExcludeDispatchKeyGuard(kKey): excluding a backend key
//   excludes the Dense functionality for every backend, and nested ops fail
//   with a misleading "no tensor arguments" error.
// - The thread-local set is forced to the stripped one for the duration of
//   the real kernel and the observer (ForceDispatchKeyGuard restores the
//   exact previous set, bits included), so nested ops are not intercepted
//   and interception resumes afterwards.
void InterceptBoxed(const c10::OperatorHandle& op, DispatchKeySet ks, torch::jit::Stack* stack) {
  c10::impl::LocalDispatchKeySet local = c10::impl::tls_local_dispatch_key_set();
  local.included_ = StripKey(local.included_);
  c10::impl::ForceDispatchKeyGuard guard(local);
  OpObserver* observer = tls_observer;
  if (observer == nullptr) observer = fallback_observer.load(std::memory_order_acquire);
  if (observer == nullptr) {
    unobserved_ops.fetch_add(1, std::memory_order_relaxed);
    op.redispatchBoxed(ks.remove_backend(kBackendBit) & kBelowBackendSelect, stack);
    return;
  }
  if (observer->TakeOver(op, stack)) return;
  const size_t num_args = op.schema().arguments().size();
  observer->OnOp(op, c10::ArrayRef<c10::IValue>(stack->data() + stack->size() - num_args, num_args));
  try {
    op.redispatchBoxed(ks.remove_backend(kBackendBit) & kBelowBackendSelect, stack);
  } catch (...) {
    observer->OnOpFailed(op);
    throw;
  }
  const size_t num_returns = op.schema().returns().size();
  observer->OnOpEnd(
      op, c10::ArrayRef<c10::IValue>(stack->data() + stack->size() - num_returns, num_returns));
}

bool WantsDirectKernel(const c10::OperatorHandle& op) {
  return (op.hasKernelForDispatchKey(DispatchKey::CompositeExplicitAutograd) ||
          op.hasKernelForDispatchKey(DispatchKey::CompositeExplicitAutogradNonFunctional)) &&
         !op.hasKernelForDispatchKey(DispatchKey::CompositeImplicitAutograd) &&
         !op.hasKernelForDispatchKey(kKey);
}

// The dispatcher is process-global, so are Terra's registrations with it:
// they live here, made once, and stay until the process exits.
struct Registrations {
  std::vector<std::unique_ptr<torch::Library>> libraries;
  InterceptionRegistration info;
};

Registrations& RegisterOnce() {
  static Registrations* registrations = [] {
    auto* r = new Registrations;  // never destroyed: deregistering at exit races other statics
    const auto start = std::chrono::steady_clock::now();
    auto library = [&](const std::string& ns, DispatchKey key) -> torch::Library& {
      r->libraries.push_back(
          std::make_unique<torch::Library>(torch::Library::IMPL, ns, key, __FILE__, __LINE__));
      return *r->libraries.back();
    };
    // Dense, sparse, quantized and nested tensors all get the observing
    // kernel at their own PrivateUse3 variant; a fallthrough there would
    // drop the functionality bit from the key set and send a sparse tensor
    // to the dense kernel on redispatch.
    for (DispatchKey key : kVariants) {
      library("_", key).fallback(torch::CppFunction::makeFromBoxedFunction<&InterceptBoxed>());
    }
    // Core registers no autograd fallback for private-use keys; without one,
    // ops with no autograd kernel would fail at AutogradPrivateUse3.
    library("_", DispatchKey::AutogradPrivateUse3)
        .fallback(torch::CppFunction::makeFallthrough());

    auto& dispatcher = c10::Dispatcher::singleton();
    std::map<std::pair<std::string, DispatchKey>, torch::Library*> by_namespace;
    const std::vector<c10::OperatorName> names = dispatcher.getAllOpNames();
    r->info.operators_seen = names.size();
    for (const c10::OperatorName& name : names) {
      std::optional<c10::OperatorHandle> op = dispatcher.findOp(name);
      if (!op || !op->hasSchema() || !WantsDirectKernel(*op)) continue;
      std::optional<std::string_view> ns = name.getNamespace();
      if (!ns) continue;
      std::string ns_str(ns->data(), ns->size());
      std::string full = name.name;
      if (!name.overload_name.empty()) full += "." + name.overload_name;
      // At every PrivateUse3 variant, as the fallback: a composite kernel
      // outranks a fallback, so without its own kernel at
      // SparsePrivateUse3 a sparse tensor's op would skip both Terra and
      // the sparse kernel (is_coalesced on nn.Embedding(sparse=True)'s
      // gradient ran the dense default, which refuses sparse tensors).
      for (DispatchKey key : kVariants) {
        torch::Library*& lib = by_namespace[{ns_str, key}];
        if (lib == nullptr) lib = &library(ns_str, key);
        lib->impl(full.c_str(), torch::CppFunction::makeFromBoxedFunction<&InterceptBoxed>());
      }
      ++r->info.direct_kernels;
    }
    r->info.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return r;
  }();
  return *registrations;
}

std::atomic<bool> registered{false};

}  // namespace

void EnableInterception(OpObserver* observer) {
  if (!registered.load(std::memory_order_acquire)) {
    RegisterOnce();
    registered.store(true, std::memory_order_release);
  }
  tls_observer = observer;
  c10::impl::LocalDispatchKeySet local = c10::impl::tls_local_dispatch_key_set();
  local.included_ = local.included_ | DispatchKeySet(kKey);
  c10::impl::_force_tls_local_dispatch_key_set(local);
}

void DisableInterception() {
  tls_observer = nullptr;
  c10::impl::LocalDispatchKeySet local = c10::impl::tls_local_dispatch_key_set();
  local.included_ = StripKey(local.included_);
  c10::impl::_force_tls_local_dispatch_key_set(local);
}

bool InterceptionEnabled() {
  return c10::impl::tls_local_dispatch_key_set().included_.has_backend(kBackendBit);
}

InterceptionRegistration RegistrationInfo() {
  if (!registered.load(std::memory_order_acquire)) return {};
  return RegisterOnce().info;
}

void SetFallbackObserver(OpObserver* observer) {
  fallback_observer.store(observer, std::memory_order_release);
}

size_t UnobservedOpCount() { return unobserved_ops.load(std::memory_order_relaxed); }

InterceptionGuard::InterceptionGuard(OpObserver* observer)
    : previous_(tls_observer), was_enabled_(InterceptionEnabled()) {
  EnableInterception(observer);
}

InterceptionGuard::~InterceptionGuard() {
  if (was_enabled_) {
    EnableInterception(previous_);
  } else {
    DisableInterception();
  }
}

}  // namespace terra::runtime
