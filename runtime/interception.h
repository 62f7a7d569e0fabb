// Interception of ATen operators at the PyTorch dispatcher, per thread.
//
// This pair is the only place in Terra that touches dispatcher internals
// (dispatch keys, thread-local key sets, boxed kernels); they are not a stable
// PyTorch API, so everything that depends on them stays here. See
// docs/interception.md for the mechanism and the traps it avoids.
//
// Protocol:
//   1. EnableInterception(observer) on a thread adds Terra's backend key
//      (PrivateUse3) to that thread's included dispatch key set. From then on
//      every operator the thread runs on ordinary CPU/CUDA tensors reaches
//      Terra's boxed kernel below autograd: forward ops, the backward ops the
//      autograd engine runs for this thread (the engine carries the key set
//      into its worker threads with the rest of the thread-local state), and
//      optimizer ops. Ops with a CompositeExplicitAutograd kernel are seen
//      whole (`_foreach_add_`, `clone`, `detach`), not as their decomposition.
//   2. The kernel calls observer->OnOp(op, inputs), runs the real kernel, and
//      then calls observer->OnOpEnd(op, outputs) (or OnOpFailed(op) if the
//      kernel threw; the exception then propagates unchanged). Ops issued
//      while the real kernel or the observer runs are not intercepted (nested
//      ops are part of the op that issued them).
//   3. DisableInterception() removes the key; the thread runs as if Terra had
//      never been there.
//
// Registration with the dispatcher happens once per process, at the first
// EnableInterception, and changes nothing for threads that have not enabled
// interception: every kernel it adds hangs off PrivateUse3, which no tensor
// carries. Operators registered after that point (libraries loaded later)
// are intercepted through the fallback but not seen whole if they have a
// CompositeExplicitAutograd kernel.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/ArrayRef.h>

#include <cstddef>

namespace terra::runtime {

// Sees every intercepted operator of the threads it is installed on.
// Threading: called on the thread that runs the op, which is the thread that
// enabled interception or an autograd engine thread working for it (see
// EnableInterception). Ops the observer itself issues are not intercepted.
class OpObserver {
 public:
  virtual ~OpObserver() = default;
  // Called before the real kernel runs. `inputs` are the op's arguments as
  // the dispatcher boxed them; they are valid only during the call. The op
  // handle (and its operator_name()) stays valid while the operator is
  // registered, i.e. for the life of the process for aten ops. Keep it cheap:
  // it runs once per operator.
  virtual void OnOp(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> inputs) = 0;
  // Called after the real kernel returned, with its return values (valid only
  // during the call). In-place and out= ops return their mutated argument;
  // ops that return nothing (`_foreach_add_`) mutate arguments the observer
  // saw in OnOp. Every OnOp is followed by exactly one OnOpEnd or OnOpFailed
  // on the same thread, with no other op of that thread in between.
  virtual void OnOpEnd(const c10::OperatorHandle& /*op*/,
                       c10::ArrayRef<c10::IValue> /*outputs*/) {}
  // The real kernel threw; the exception propagates after this returns.
  virtual void OnOpFailed(const c10::OperatorHandle& /*op*/) {}
  // Called first, with the op's arguments on `stack`. Returning true means
  // the observer took the op over: it replaced the arguments on the stack by
  // the op's results, and neither OnOp nor the real kernel runs
  // (co-execution). The default leaves every op to the real kernel.
  virtual bool TakeOver(const c10::OperatorHandle& /*op*/, torch::jit::Stack* /*stack*/) {
    return false;
  }
};

// Starts intercepting on the current thread, reporting to `observer` (not
// owned; it must outlive DisableInterception on this thread). Enabling again
// only replaces the observer. Registers Terra's kernels with the dispatcher on
// the first call in the process.
void EnableInterception(OpObserver* observer);

// Stops intercepting on the current thread. Idempotent.
void DisableInterception();

// Whether the current thread's dispatch key set routes to Terra's kernel.
bool InterceptionEnabled();

// What the one-time registration did; zero everywhere before it ran.
struct InterceptionRegistration {
  // Operators given Terra's kernel directly because their kernel is
  // CompositeExplicitAutograd (and not CompositeImplicitAutograd).
  size_t direct_kernels = 0;
  // Operators known to the dispatcher when registration ran.
  size_t operators_seen = 0;
  double seconds = 0;
};
InterceptionRegistration RegistrationInfo();

// The observer for threads that inherited the key without installing an
// observer of their own: the autograd engine's device threads (CUDA
// backward), which run with the thread-local state of the thread that called
// backward(). nullptr (the default) leaves such ops unobserved. The observer
// must then be thread-safe; it is not owned and must outlive its
// installation. Process-wide.
void SetFallbackObserver(OpObserver* observer);

// Ops that reached Terra's kernel on a thread with no observer installed and
// no fallback observer: they ran unobserved.
size_t UnobservedOpCount();

// Enables interception for a scope; restores the previous observer (or
// disables interception if there was none) on exit.
class InterceptionGuard {
 public:
  explicit InterceptionGuard(OpObserver* observer);
  ~InterceptionGuard();
  InterceptionGuard(const InterceptionGuard&) = delete;
  InterceptionGuard& operator=(const InterceptionGuard&) = delete;

 private:
  OpObserver* previous_;
  bool was_enabled_;
};

}  // namespace terra::runtime
