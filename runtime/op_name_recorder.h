// An OpObserver that counts intercepted operators and, optionally, keeps the
// name of each, in order. For tests and measurements; the TraceGraph recorder
// replaces it for real work.
//
// Threading: one recorder per thread; it is not synchronized. Ops observed on
// autograd worker threads would need a recorder of their own.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "runtime/interception.h"

namespace terra::runtime {

class OpNameRecorder final : public OpObserver {
 public:
  explicit OpNameRecorder(bool keep_names) : keep_names_(keep_names) {}

  void OnOp(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> /*inputs*/) override {
    ++count_;
    // The handle's OperatorName lives as long as the operator's registration.
    if (keep_names_) names_.push_back(&op.operator_name());
  }

  size_t count() const { return count_; }

  // "aten::add.Tensor" ("aten::relu" when the overload is the default one).
  std::vector<std::string> Names() const {
    std::vector<std::string> out;
    out.reserve(names_.size());
    for (const c10::OperatorName* name : names_) {
      out.push_back(name->overload_name.empty() ? name->name
                                                : name->name + "." + name->overload_name);
    }
    return out;
  }

 private:
  bool keep_names_;
  size_t count_ = 0;
  std::vector<const c10::OperatorName*> names_;
};

}  // namespace terra::runtime
