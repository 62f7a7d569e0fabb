#include "runtime/recorder.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/TensorImpl.h>

#include <algorithm>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "runtime/autograd_context.h"

namespace terra::runtime {

struct Recorder::OpInfo {
  std::string name;
  std::string overload;
  bool reads_value = false;          // returns a Python number computed from tensor data
  bool ignored = false;              // runs, but is not part of the program's computation
  std::vector<size_t> mutated_args;  // arguments the schema marks as written
};

namespace {

constexpr size_t kMaxIterationsKept = 1024;

// The op the calling thread is between OnOp and OnOpEnd of. Nested ops are
// not intercepted, so one per thread is enough.
struct Pending {
  bool active = false;
  graph::NodeIdentity identity;
  std::vector<graph::ValueRef> inputs;
  std::vector<at::Tensor> mutated;  // only for ops that return no tensor
  bool reads_value = false;         // a sync point: Python gets a number from tensor data
  bool maps_sequence = false;       // this op created the backward function below
  uint64_t sequence_nr = 0;
};

// Per thread: where the previous op came from (for ordinals) and the last
// autograd sequence number seen.
struct ThreadState {
  Pending pending;
  std::vector<graph::Frame> frames;       // scratch for the current op
  std::vector<graph::Frame> last_frames;  // the previous forward op's frames
  uint64_t last_backward_of = 0;
  uint32_t last_ordinal = 0;
  bool has_last = false;
  uint64_t epoch = 0;  // the recorder epoch has_last refers to
  const void* recorder = nullptr;
  uint64_t last_sequence_nr = 0;
};
thread_local ThreadState tls;

// Ops whose number result is metadata, not data: reading it is no sync point.
bool IsMetadataQuery(std::string_view name) {
  static const std::unordered_set<std::string_view> kQueries = {
      "aten::is_same_size", "aten::size",          "aten::stride",
      "aten::sym_size",     "aten::sym_stride",    "aten::sym_numel",
      "aten::sym_storage_offset", "aten::numel",   "aten::dim",
      "aten::is_complex",   "aten::is_floating_point", "aten::_nnz",
      "aten::dense_dim",    "aten::sparse_dim",    "aten::is_coalesced",
      "aten::output_nr",    "aten::_version",      "aten::is_leaf",
      "aten::_is_zerotensor", "aten::is_conj",     "aten::is_neg",
      "aten::is_inference", "aten::is_signed",     "aten::is_pinned",
      "aten::_has_same_storage_numel", "aten::_has_compatible_shallow_copy_type",
      "aten::is_set_to",    "aten::is_distributed", "aten::q_scale",
      "aten::q_zero_point", "aten::requires_grad_", "aten::retains_grad",
      "aten::_use_cudnn_ctc_loss", "aten::is_vulkan_available",
  };
  return kQueries.count(name) != 0;
}

bool IsNumberType(const c10::TypePtr& type) {
  switch (type->kind()) {
    case c10::TypeKind::NumberType:
    case c10::TypeKind::FloatType:
    case c10::TypeKind::IntType:
    case c10::TypeKind::BoolType:
    case c10::TypeKind::ComplexType:
      return true;
    default:
      return false;
  }
}

graph::TensorMeta MetaOf(const at::Tensor& t) {
  graph::TensorMeta m;
  m.dtype = static_cast<uint8_t>(t.scalar_type());
  const c10::Device device = t.device();
  m.device_type = static_cast<uint8_t>(device.type());
  m.device_index = device.index();
  if (t.is_nested()) return m;
  const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  try {
    const c10::IntArrayRef sizes = impl->sizes();
    m.sizes.assign(sizes.begin(), sizes.end());
    if (t.layout() == c10::kStrided) {
      const c10::IntArrayRef strides = impl->strides();
      m.strides.assign(strides.begin(), strides.end());
    }
  } catch (const c10::Error&) {
    // Symbolic or policy-controlled sizes: identify by dtype and device only.
    m.sizes.clear();
    m.strides.clear();
  }
  return m;
}

}  // namespace

Recorder::Recorder(LocationSource* locations, uint32_t max_ops_per_iteration)
    : locations_(locations), max_ops_per_iteration_(max_ops_per_iteration) {}

Recorder::~Recorder() = default;

const Recorder::OpInfo& Recorder::InfoFor(const c10::OperatorHandle& op) {
  const c10::OperatorName* key = &op.operator_name();
  auto it = ops_.find(key);
  if (it != ops_.end()) return *it->second;
  auto info = std::make_unique<OpInfo>();
  info->name = key->name;
  info->overload = key->overload_name;
  const c10::FunctionSchema& schema = op.schema();
  bool any_return = !schema.returns().empty();
  bool all_numbers = any_return;
  for (const c10::Argument& ret : schema.returns()) all_numbers = all_numbers && IsNumberType(ret.type());
  info->reads_value = all_numbers && !IsMetadataQuery(info->name);
  // The profiler's record_function markers (the optimizer's step and
  // zero_grad issue them) compute nothing.
  info->ignored = info->name.rfind("profiler::", 0) == 0;
  const auto& args = schema.arguments();
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].alias_info() != nullptr && args[i].alias_info()->isWrite()) {
      info->mutated_args.push_back(i);
    }
  }
  return *ops_.emplace(key, std::move(info)).first->second;
}

graph::ValueRef Recorder::Resolve(const at::Tensor& tensor) {
  c10::TensorImpl* impl = tensor.unsafeGetTensorImpl();
  auto it = values_.find(impl);
  if (it != values_.end()) return it->second.ref;
  const graph::ValueRef ref = graph::ValueRef::External(graph::ValueKind::kProgramInput, next_input_++);
  values_.emplace(impl, Tracked{ref, c10::weak_intrusive_ptr<c10::TensorImpl>(tensor.getIntrusivePtr())});
  return ref;
}

void Recorder::Track(const at::Tensor& tensor, graph::ValueRef ref) {
  c10::TensorImpl* impl = tensor.unsafeGetTensorImpl();
  auto it = values_.find(impl);
  if (it != values_.end()) {
    it->second.ref = ref;
    return;
  }
  values_.emplace(impl, Tracked{ref, c10::weak_intrusive_ptr<c10::TensorImpl>(tensor.getIntrusivePtr())});
}

void Recorder::OnOp(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> inputs) {
  ThreadState& ts = tls;
  const uint64_t epoch = epoch_.load(std::memory_order_relaxed);
  if (ts.epoch != epoch || ts.recorder != this) {
    ts.has_last = false;  // a new iteration (or recorder): ordinals start over
    ts.epoch = epoch;
    ts.recorder = this;
  }
  Pending& p = ts.pending;
  p.active = true;
  p.identity = graph::NodeIdentity{};
  p.inputs.clear();
  p.mutated.clear();
  p.maps_sequence = false;

  // Location, first half: frames are read without the lock (the source may
  // need the GIL on a cache miss; the lock is never held while waiting for it).
  const BackwardContext backward = CurrentBackward();
  if (!backward.active) {
    locations_->CurrentFrames(&ts.frames);
    const uint64_t next = NextSequenceNr();
    if (next != ts.last_sequence_nr) {
      // Autograd created this op's backward function just before its kernel.
      if (next > 0) {
        p.maps_sequence = true;
        p.sequence_nr = next - 1;
      }
      ts.last_sequence_nr = next;
    }
  }

  std::lock_guard<std::mutex> lock(mu_);
  if (overflowed_ || trace_.size() >= max_ops_per_iteration_) {
    if (!overflowed_) {
      overflowed_ = true;
      ++stats_.overflows;
      trace_ = graph::Trace();
      values_.clear();
      next_input_ = 0;
      stats_.ops_in_current = 0;
    }
    p.active = false;
    return;
  }
  const OpInfo& info = InfoFor(op);
  if (info.ignored) {
    p.active = false;
    return;
  }
  graph::NodeIdentity& id = p.identity;
  id.op = info.name;
  id.overload = info.overload;

  graph::Location& loc = id.location;
  if (backward.active) {
    uint64_t of = 0;
    if (backward.has_forward) {
      auto it = forward_of_seq_.find(backward.sequence_nr);
      if (it != forward_of_seq_.end()) of = it->second;
    }
    if (of == 0) {
      // No forward op (AccumulateGrad, a hook) or one issued before tracing:
      // the function's type and the node issued before it.
      const uint64_t before = trace_.size() > 0 ? trace_.nodes().back().hash : 0;
      of = backward.kind ^ (before * 0x100000001b3ull);
      if (of == 0) of = 1;
    }
    loc.backward_of = of;
    loc.ordinal = (ts.has_last && ts.last_backward_of == of) ? ts.last_ordinal + 1 : 0;
    ts.last_backward_of = of;
    ts.last_frames.clear();
  } else {
    const bool same = ts.has_last && ts.last_backward_of == 0 && ts.frames == ts.last_frames;
    loc.ordinal = same ? ts.last_ordinal + 1 : 0;
    loc.frames = ts.frames;
    std::swap(ts.frames, ts.last_frames);
    ts.last_backward_of = 0;
  }
  ts.last_ordinal = loc.ordinal;
  ts.has_last = true;

  // Arguments: tensors become metadata plus a value; everything else is
  // encoded in argument order.
  graph::ArgsEncoder args;
  auto add_tensor = [&](const at::Tensor& t) {
    if (!t.defined()) {
      args.None();
      return;
    }
    id.inputs.push_back(MetaOf(t));
    p.inputs.push_back(Resolve(t));
  };
  for (size_t i = 0; i < inputs.size(); ++i) {
    const c10::IValue& v = inputs[i];
    if (v.isTensor()) {
      add_tensor(v.toTensor());
    } else if (v.isTensorList()) {
      const c10::List<at::Tensor> list = v.toTensorList();
      args.Int(static_cast<int64_t>(list.size()));
      for (const at::Tensor& t : list) add_tensor(t);
    } else if (v.isList()) {
      const c10::List<c10::IValue> list = v.toList();
      args.Int(static_cast<int64_t>(list.size()));
      for (const c10::IValue& e : list) {
        if (e.isTensor()) {
          add_tensor(e.toTensor());
        } else if (e.isNone()) {
          args.None();
        } else if (e.isDouble()) {
          args.Double(e.toDouble());
        } else if (e.isBool()) {
          args.Bool(e.toBool());
        } else if (e.isInt()) {
          args.Int(e.toInt());
        } else if (e.isSymInt()) {
          auto as_int = e.toSymInt().maybe_as_int();
          if (as_int) args.Int(*as_int); else args.String("symint");
        } else {
          args.String(e.tagKind());
        }
      }
    } else if (v.isNone()) {
      args.None();
    } else if (v.isBool()) {
      args.Bool(v.toBool());
    } else if (v.isInt()) {
      args.Int(v.toInt());
    } else if (v.isDouble()) {
      args.Double(v.toDouble());
    } else if (v.isIntList()) {
      args.IntList(v.toIntVector());
    } else if (v.isSymInt()) {
      auto as_int = v.toSymInt().maybe_as_int();
      if (as_int) args.Int(*as_int); else args.String("symint");
    } else if (v.isString()) {
      args.String(v.toStringRef());
    } else if (v.isComplexDouble()) {
      const c10::complex<double> c = v.toComplexDouble();
      args.Double(c.real()).Double(c.imag());
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
  id.args = args.Take();

  p.reads_value = info.reads_value;
  if (!info.mutated_args.empty() && op.schema().returns().empty()) {
    for (size_t index : info.mutated_args) {
      if (index >= inputs.size()) continue;
      const c10::IValue& v = inputs[index];
      if (v.isTensor()) {
        p.mutated.push_back(v.toTensor());
      } else if (v.isTensorList()) {
        for (const at::Tensor& t : v.toTensorList()) p.mutated.push_back(t);
      }
    }
  }
}

void Recorder::OnOpEnd(const c10::OperatorHandle& /*op*/, c10::ArrayRef<c10::IValue> outputs) {
  Pending& p = tls.pending;
  if (!p.active) return;  // started before this recorder was installed
  p.active = false;

  std::vector<at::Tensor> outs;
  for (const c10::IValue& v : outputs) {
    if (v.isTensor()) {
      if (v.toTensor().defined()) outs.push_back(v.toTensor());
    } else if (v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorList()) outs.push_back(t);
    }
  }
  if (outs.empty()) outs = std::move(p.mutated);

  std::lock_guard<std::mutex> lock(mu_);
  // Kept for the sync point before the identity is moved into the trace.
  graph::Location sync_location;
  std::string sync_op;
  graph::ValueRef sync_value = graph::ValueRef::External(graph::ValueKind::kConstant, 0);
  if (p.reads_value) {
    sync_location = p.identity.location;
    sync_op = p.identity.op;
    if (!p.inputs.empty()) sync_value = p.inputs.front();
  }
  const uint32_t pos = trace_.Add(std::move(p.identity), std::move(p.inputs),
                                  static_cast<uint32_t>(outs.size()));
  for (size_t k = 0; k < outs.size(); ++k) {
    Track(outs[k], graph::ValueRef::Output(pos, static_cast<uint32_t>(k)));
  }
  if (p.maps_sequence) forward_of_seq_[p.sequence_nr] = trace_.nodes()[pos].hash;
  ++stats_.ops;
  ++stats_.ops_in_current;
  if (p.reads_value) AddSyncLocked(sync_value, sync_location, sync_op);
}

void Recorder::OnOpFailed(const c10::OperatorHandle& /*op*/) {
  tls.pending.active = false;
  tls.pending.mutated.clear();
}

void Recorder::OnSync(const at::Tensor& tensor, const std::string& kind) {
  ThreadState& ts = tls;
  graph::Location loc;
  locations_->CurrentFrames(&ts.frames);
  loc.frames = ts.frames;
  std::lock_guard<std::mutex> lock(mu_);
  if (overflowed_) return;
  const graph::ValueRef ref = tensor.defined()
                                  ? Resolve(tensor)
                                  : graph::ValueRef::External(graph::ValueKind::kConstant, 0);
  AddSyncLocked(ref, loc, kind);
}

void Recorder::AddSyncLocked(graph::ValueRef value, const graph::Location& location,
                             const std::string& op) {
  trace_.AddSync(value, location);
  ++stats_.syncs;
  graph::NodeIdentity key;
  key.op = op;
  key.location = location;
  key.location.ordinal = 0;
  const uint64_t h = graph::StructuralHash(key);
  auto it = sync_index_.find(h);
  if (it == sync_index_.end()) {
    sync_index_.emplace(h, syncs_.size());
    syncs_.push_back(SyncSummary{key.location, op, 1});
  } else {
    ++syncs_[it->second].count;
  }
}

bool Recorder::EndIteration(bool merge) {
  std::lock_guard<std::mutex> lock(mu_);
  overflowed_ = false;
  epoch_.fetch_add(1, std::memory_order_relaxed);
  const uint64_t seq = NextSequenceNr();
  // Backward functions created before the previous boundary can no longer
  // run in this program's usual shape; forget them so the map stays small.
  for (auto it = forward_of_seq_.begin(); it != forward_of_seq_.end();) {
    it = it->first < seq_at_previous_end_ ? forward_of_seq_.erase(it) : std::next(it);
  }
  seq_at_previous_end_ = seq;
  if (trace_.size() == 0 || !merge) {
    if (!merge) stats_.prologue_ops += trace_.size();
    stats_.ops_in_current = 0;
    trace_ = graph::Trace();
    values_.clear();
    next_input_ = 0;
    return false;
  }
  const size_t nodes_before = graph_.NodeCount();
  const bool changed = graph_.AddTrace(trace_);
  if (stats_.iterations > 0) {
    for (size_t i = nodes_before; i < graph_.NodeCount(); ++i) {
      const uint64_t n = ++new_variants_[graph::VariantKey(graph_.nodes()[i].identity)];
      if (n > stats_.max_new_variants) stats_.max_new_variants = n;
      if (n == kMaxShapeVariants + 1) ++stats_.locations_over_bound;
    }
  }
  ++stats_.iterations;
  stats_.ops_per_iteration.push_back(static_cast<uint32_t>(trace_.size()));
  if (stats_.ops_per_iteration.size() > kMaxIterationsKept) {
    stats_.ops_per_iteration.erase(stats_.ops_per_iteration.begin());
  }
  stats_.ops_in_current = 0;
  trace_ = graph::Trace();
  values_.clear();
  next_input_ = 0;
  return changed;
}

bool Recorder::IsStable(uint64_t k) const {
  std::lock_guard<std::mutex> lock(mu_);
  return graph_.IsStable(k);
}

graph::TraceGraph Recorder::Graph() const {
  std::lock_guard<std::mutex> lock(mu_);
  return graph_;
}

RecorderStats Recorder::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

std::vector<SyncSummary> Recorder::Syncs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return syncs_;
}

}  // namespace terra::runtime
