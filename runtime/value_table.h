// The recorder's map from live tensors to the trace values they hold: an
// open-addressing table keyed by TensorImpl address, cleared each iteration.
//
// Each entry holds a weak reference to its TensorImpl, which keeps the
// object's memory (not its storage) allocated until Clear, so an address in
// the table is never reused by another tensor within an iteration. Not
// thread-safe; the recorder's mutex guards it. No allocation per entry: the
// slot array doubles when half full and keeps its capacity across Clear.
#pragma once

#include <c10/core/TensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "graph/trace.h"

namespace terra::runtime {

class ValueTable {
 public:
  ValueTable() { slots_.resize(kInitialSlots); }

  // The value `impl` holds, or nullptr.
  const graph::ValueRef* Find(const c10::TensorImpl* impl) const {
    const Slot& s = slots_[Probe(impl)];
    return s.key == impl ? &s.ref : nullptr;
  }

  // Sets the value `tensor` holds (inserting it if new).
  using Impl = c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

  void Set(const Impl& tensor, graph::ValueRef ref) {
    size_t i = Probe(tensor.get());
    if (slots_[i].key == tensor.get()) {
      slots_[i].ref = ref;
      return;
    }
    if (2 * (used_.size() + 1) > slots_.size()) {
      Grow();
      i = Probe(tensor.get());
    }
    slots_[i] = Slot{tensor.get(), ref, WeakImpl(tensor)};
    used_.push_back(static_cast<uint32_t>(i));
  }

  // Forgets every tensor (and releases the weak references).
  void Clear() {
    for (uint32_t i : used_) slots_[i] = Slot{};
    used_.clear();
  }

  size_t size() const { return used_.size(); }

 private:
  static constexpr size_t kInitialSlots = 1024;
  struct Slot {
    const c10::TensorImpl* key = nullptr;
    graph::ValueRef ref;
    std::optional<WeakImpl> keep;
  };

  size_t Probe(const c10::TensorImpl* impl) const {
    const size_t mask = slots_.size() - 1;
    // TensorImpls are 16-byte aligned at least; mix the address bits.
    size_t i = (reinterpret_cast<uintptr_t>(impl) >> 4) * 0x9E3779B97F4A7C15ull >> 20 & mask;
    while (slots_[i].key != nullptr && slots_[i].key != impl) i = (i + 1) & mask;
    return i;
  }

  void Grow() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);
    std::vector<uint32_t> used;
    used.reserve(used_.size());
    for (uint32_t i : used_) {
      const size_t j = Probe(old[i].key);
      slots_[j] = std::move(old[i]);
      used.push_back(static_cast<uint32_t>(j));
    }
    used_.swap(used);
  }

  std::vector<Slot> slots_;
  std::vector<uint32_t> used_;  // occupied slots, for Clear
};

}  // namespace terra::runtime
