// How an op's arguments enter its identity (graph/node.h), shared by the
// recorder (which builds NodeIdentity values) and the validator (which only
// hashes them), so that both see exactly the same bytes.
//
//   EncodeArguments  walks the boxed arguments in schema order: tensors
//                    (alone, in lists, optional) go to `on_tensor` in order;
//                    everything else, and an undefined tensor, is encoded.
//   MetaOf/HashMeta  a tensor input's metadata as TensorMeta, or streamed in
//                    EncodeIdentity's layout into a hash.
//   IdentityTraits   per operator: the name hash prefix, the argument policy,
//                    whether it is ignored.
//   OrdinalTracker   the per-thread rule that numbers consecutive ops issued
//                    from one location.
// Header-only: inline functions of ATen types, included by two .cc files.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/function_schema.h>
#include <ATen/core/ivalue.h>
#include <c10/core/TensorImpl.h>

#include <bit>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "graph/node.h"
#include "graph/wire.h"

namespace terra::runtime {

// Which scalar argument values belong to an op's identity. Values left out
// are "fed": co-execution passes the program's values of the moment to the
// kernel (design.md §1, input feeding), so a learning rate that changes each
// step, or a slice that moves along a sequence, does not make a new node.
//   - Floating-point values are fed, except for ops whose output shape they
//     decide (arange, range, upsampling scales).
//   - Integer values are fed for view ops (a return aliases an input without
//     writing it): a view runs for real on the program's side, so its result
//     metadata is exact whatever the values, and consumers' input metadata
//     still pins the shapes that matter. Elsewhere integers (dims, sizes) stay.
//   - Booleans, strings, dtypes, devices and list lengths always stay.
struct ArgumentPolicy {
  bool feed_doubles = true;
  bool feed_ints = false;
};

inline ArgumentPolicy PolicyFor(const c10::FunctionSchema& schema) {
  ArgumentPolicy policy;
  const std::string& name = schema.name();
  if (name.find("arange") != std::string::npos || name == "aten::range" ||
      name.find("upsample") != std::string::npos) {
    policy.feed_doubles = false;
  }
  for (const c10::Argument& ret : schema.returns()) {
    if (ret.alias_info() != nullptr && !ret.alias_info()->isWrite()) policy.feed_ints = true;
  }
  return policy;
}

template <typename OnTensor>
void EncodeArguments(c10::ArrayRef<c10::IValue> inputs, const ArgumentPolicy& policy,
                     graph::ArgsEncoder& args, OnTensor&& on_tensor) {
  using Tag = graph::ArgsEncoder::Tag;
  auto integer = [&](int64_t v) {
    if (policy.feed_ints) {
      args.Fed(Tag::kInt, static_cast<uint64_t>(v));
    } else {
      args.Int(v);
    }
  };
  auto floating = [&](double v) {
    if (policy.feed_doubles) {
      args.Fed(Tag::kDouble, std::bit_cast<uint64_t>(v));
    } else {
      args.Double(v);
    }
  };
  auto tensor = [&](const at::Tensor& t) {
    if (t.defined()) {
      on_tensor(t);
    } else {
      args.None();
    }
  };
  auto sym_int = [&](const c10::SymInt& v) {
    if (auto as_int = v.maybe_as_int()) {
      integer(*as_int);
    } else {
      args.String("symint");
    }
  };
  for (const c10::IValue& v : inputs) {
    if (v.isTensor()) {
      tensor(v.toTensor());
    } else if (v.isTensorList()) {
      const c10::List<at::Tensor> list = v.toTensorList();
      args.Int(static_cast<int64_t>(list.size()));
      for (const at::Tensor& t : list) tensor(t);
    } else if (v.isList()) {
      const c10::List<c10::IValue> list = v.toList();
      args.Int(static_cast<int64_t>(list.size()));
      for (const c10::IValue& e : list) {
        if (e.isTensor()) {
          tensor(e.toTensor());
        } else if (e.isNone()) {
          args.None();
        } else if (e.isDouble()) {
          floating(e.toDouble());
        } else if (e.isBool()) {
          args.Bool(e.toBool());
        } else if (e.isInt()) {
          integer(e.toInt());
        } else if (e.isSymInt()) {
          sym_int(e.toSymInt());
        } else {
          args.String(e.tagKind());
        }
      }
    } else if (v.isNone()) {
      args.None();
    } else if (v.isBool()) {
      args.Bool(v.toBool());
    } else if (v.isInt()) {
      integer(v.toInt());
    } else if (v.isDouble()) {
      floating(v.toDouble());
    } else if (v.isSymInt()) {
      sym_int(v.toSymInt());
    } else if (v.isString()) {
      args.String(v.toStringRef());
    } else if (v.isComplexDouble()) {
      const c10::complex<double> c = v.toComplexDouble();
      floating(c.real());
      floating(c.imag());
    } else if (v.isDevice()) {
      const c10::Device d = v.toDevice();
      args.Int((static_cast<int64_t>(d.type()) << 16) | static_cast<uint16_t>(d.index()));
    } else if (v.isGenerator()) {
      // Which generator is not part of the identity; its consumption order is
      // the program order of the ops that draw from it.
      args.String("generator");
    } else {
      args.String(v.tagKind());
    }
  }
}

// Calls fn(tensor, argument index, list element or -1) for each defined
// tensor among an op's arguments (a Tensor, a Tensor[], a Tensor?[]), in
// order, until fn returns false; returns whether it never did.
template <typename Fn>
bool ForEachTensorArgument(c10::ArrayRef<c10::IValue> inputs, Fn&& fn) {
  for (uint32_t i = 0; i < inputs.size(); ++i) {
    const c10::IValue& v = inputs[i];
    if (v.isTensor()) {
      if (v.toTensor().defined() && !fn(v.toTensor(), i, -1)) return false;
    } else if (v.isTensorList()) {
      const c10::List<at::Tensor> list = v.toTensorList();
      for (size_t j = 0; j < list.size(); ++j) {
        const at::Tensor t = list.get(j);
        if (t.defined() && !fn(t, i, static_cast<int32_t>(j))) return false;
      }
    } else if (v.isList()) {
      const c10::List<c10::IValue> list = v.toList();
      for (size_t j = 0; j < list.size(); ++j) {
        const c10::IValue e = list.get(j);
        if (e.isTensor() && e.toTensor().defined() && !fn(e.toTensor(), i, static_cast<int32_t>(j))) return false;
      }
    }
  }
  return true;
}

// Sizes and strides where the tensor has plain ones; nested tensors and
// tensors with symbolic or policy-controlled sizes are identified by dtype
// and device alone.
inline bool PlainSizes(const c10::TensorImpl& t) {
  return !t.is_nested() && !t.has_symbolic_sizes_strides();
}
inline bool PlainSizes(const at::Tensor& t) { return PlainSizes(*t.unsafeGetTensorImpl()); }

inline graph::TensorMeta MetaOf(const at::Tensor& t) {
  graph::TensorMeta m;
  m.dtype = static_cast<uint8_t>(t.scalar_type());
  const c10::Device device = t.device();
  m.device_type = static_cast<uint8_t>(device.type());
  m.device_index = device.index();
  if (!PlainSizes(t)) return m;
  const c10::IntArrayRef sizes = t.sizes();
  m.sizes.assign(sizes.begin(), sizes.end());
  if (t.layout() == c10::kStrided) {
    const c10::IntArrayRef strides = t.strides();
    m.strides.assign(strides.begin(), strides.end());
  }
  return m;
}

// EncodeIdentity's bytes for MetaOf(t), into a hash.
inline void HashMeta(const c10::TensorImpl& t, graph::HashWriter& h) {
  h.U8(static_cast<uint8_t>(c10::typeMetaToScalarType(t.dtype())));
  const c10::Device device = t.device();
  h.U8(static_cast<uint8_t>(device.type()));
  h.U16(static_cast<uint16_t>(static_cast<int16_t>(device.index())));
  if (!PlainSizes(t)) {
    h.U32(0);
    h.U32(0);
    return;
  }
  const c10::IntArrayRef sizes = t.sizes();
  h.U32(static_cast<uint32_t>(sizes.size()));
  for (int64_t s : sizes) h.I64(s);
  if (t.layout() == c10::kStrided) {
    const c10::IntArrayRef strides = t.strides();
    h.U32(static_cast<uint32_t>(strides.size()));
    for (int64_t s : strides) h.I64(s);
  } else {
    h.U32(0);
  }
}
inline const c10::TensorImpl& ImplOf(const at::Tensor& t) { return *t.unsafeGetTensorImpl(); }
inline const c10::TensorImpl& ImplOf(const c10::TensorImpl* t) { return *t; }

// The hash after the operator and overload names: the start of every hash of
// this operator's nodes.
inline graph::HashWriter NameState(const c10::OperatorName& name) {
  graph::HashWriter h;
  h.Bytes(name.name);
  h.Bytes(name.overload_name);
  return h;
}

// What the recorder and the validator both need to know of an operator to
// compute its nodes' identities; computed once per operator and cached.
struct IdentityTraits {
  graph::HashWriter name_state;  // NameState()
  ArgumentPolicy policy;    // which argument values are fed, not identity
  // The profiler's record_function markers (optimizers' step and zero_grad
  // issue them) compute nothing: they run, but are no node.
  bool ignored = false;
};

inline IdentityTraits IdentityTraitsOf(const c10::OperatorHandle& op) {
  IdentityTraits t;
  t.name_state = NameState(op.operator_name());
  t.policy = PolicyFor(op.schema());
  t.ignored = op.operator_name().name.rfind("profiler::", 0) == 0;
  return t;
}

// graph::StructuralHash of the identity these parts make, computed without
// building it (EncodeIdentity's layout after the names). `tensors` holds
// at::Tensor or TensorImpl pointers (the validator's, which hold no reference:
// a reference would raise the use counts autograd decides by).
template <typename Tensors>
uint64_t IdentityHash(const graph::HashWriter& name_state, std::string_view args, const Tensors& tensors,
                      const std::vector<graph::Frame>& frames, uint64_t backward_of, uint32_t ordinal) {
  graph::HashWriter h = name_state;
  h.Bytes(args);
  h.U32(static_cast<uint32_t>(tensors.size()));
  for (const auto& t : tensors) HashMeta(ImplOf(t), h);
  h.U32(static_cast<uint32_t>(frames.size()));
  for (const graph::Frame& f : frames) {
    h.U64(f.code_id);
    h.U32(f.offset);
  }
  h.U32(0);  // loop context
  h.U64(backward_of);
  h.U32(ordinal);
  return h.state();
}

// graph::MetasHash of these tensors' metadata, streamed.
inline uint64_t OutputsHash(const std::vector<at::Tensor>& tensors) {
  graph::HashWriter h;
  h.U32(static_cast<uint32_t>(tensors.size()));
  for (const at::Tensor& t : tensors) HashMeta(ImplOf(t), h);
  return h.state();
}

// Numbers consecutive ops from one location (Location::ordinal): an op gets
// the previous op's ordinal + 1 when it comes from the same Python frames (or
// the same backward function), else 0. Reset at iteration boundaries.
class OrdinalTracker {
 public:
  // `frames` is the current op's (empty for a backward op); the tracker keeps
  // a copy, reusing its capacity.
  // The ordinal the next op would get, without recording it.
  uint32_t Peek(const std::vector<graph::Frame>& frames, uint64_t backward_of) const {
    const bool same = has_last_ && last_backward_of_ == backward_of && last_frames_ == frames;
    return same ? last_ordinal_ + 1 : 0;
  }
  uint32_t Next(const std::vector<graph::Frame>& frames, uint64_t backward_of) {
    const bool same = has_last_ && last_backward_of_ == backward_of && last_frames_ == frames;
    last_ordinal_ = same ? last_ordinal_ + 1 : 0;
    last_frames_ = frames;
    last_backward_of_ = backward_of;
    has_last_ = true;
    return last_ordinal_;
  }
  void Reset() { has_last_ = false; }

 private:
  std::vector<graph::Frame> last_frames_;
  uint64_t last_backward_of_ = 0;
  uint32_t last_ordinal_ = 0;
  bool has_last_ = false;
};

}  // namespace terra::runtime
