#include "runtime/recorder.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/TensorImpl.h>

#include <algorithm>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "runtime/autograd_context.h"
#include "runtime/base/check.h"
#include "runtime/op_arguments.h"

namespace terra::runtime {

struct Recorder::OpInfo {
  std::string name;
  std::string overload;
  IdentityTraits traits;
  bool reads_value = false;          // returns a Python number computed from tensor data
  std::vector<size_t> mutated_args;  // arguments the schema marks as written
};

namespace {

constexpr size_t kMaxIterationsKept = 1024;

// The op the calling thread is between OnOp and OnOpEnd of. Nested ops are
// not intercepted, so one per thread is enough.
struct Pending {
  bool active = false;
  bool known = false;  // the graph has this node: only its hash is recorded
  uint64_t hash = 0;
  graph::NodeIdentity identity;  // built only for new nodes and sync points
  std::vector<graph::ValueRef> inputs;
  std::vector<at::Tensor> mutated;  // only for ops that return no tensor
  bool reads_value = false;         // a sync point: Python gets a number from tensor data
};

// Per thread: the pending op and reused buffers.
struct ThreadState {
  Pending pending;
  std::vector<at::Tensor> tensors;   // scratch: the op's tensor inputs
  std::vector<at::Tensor> outputs;   // scratch: its tensor outputs
  graph::ArgsEncoder args;           // scratch: its other arguments
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

}  // namespace

Recorder::Recorder(LocationSource* locations, uint32_t max_ops_per_iteration, OpLocator* shared)
    : locations_(locations),
      own_locator_(shared ? nullptr : std::make_unique<OpLocator>(locations)),
      locator_(shared ? shared : own_locator_.get()),
      max_ops_per_iteration_(max_ops_per_iteration) {}

Recorder::~Recorder() = default;

const Recorder::OpInfo& Recorder::InfoFor(const c10::OperatorHandle& op) {
  const c10::OperatorName* key = &op.operator_name();
  auto it = ops_.find(key);
  if (it != ops_.end()) return *it->second;
  auto info = std::make_unique<OpInfo>();
  info->name = key->name;
  info->overload = key->overload_name;
  info->traits = IdentityTraitsOf(op);
  const c10::FunctionSchema& schema = op.schema();
  bool any_return = !schema.returns().empty();
  bool all_numbers = any_return;
  for (const c10::Argument& ret : schema.returns()) all_numbers = all_numbers && IsNumberType(ret.type());
  info->reads_value = all_numbers && !IsMetadataQuery(info->name);
  const auto& args = schema.arguments();
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].alias_info() != nullptr && args[i].alias_info()->isWrite()) {
      info->mutated_args.push_back(i);
    }
  }
  return *ops_.emplace(key, std::move(info)).first->second;
}

graph::ValueRef Recorder::Resolve(const at::Tensor& tensor) {
  if (const graph::ValueRef* ref = values_.Find(tensor.unsafeGetTensorImpl())) return *ref;
  const graph::ValueRef ref = graph::ValueRef::External(graph::ValueKind::kProgramInput, next_input_++);
  values_.Set(tensor.getIntrusivePtr(), ref);
  return ref;
}

void Recorder::Track(const at::Tensor& tensor, graph::ValueRef ref) {
  values_.Set(tensor.getIntrusivePtr(), ref);
}

void Recorder::OnOp(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> inputs) {
  ThreadState& ts = tls;
  Pending& p = ts.pending;
  p.active = true;
  p.identity = graph::NodeIdentity{};
  p.inputs.clear();
  p.mutated.clear();

  // Frames are read without the lock (the source may need the GIL on a cache
  // miss; the lock is never held while waiting for it).
  OpSite site = locator_->Observe();

  std::lock_guard<std::mutex> lock(mu_);
  if (overflowed_ || trace_.size() >= max_ops_per_iteration_) {
    if (!overflowed_) {
      overflowed_ = true;
      ++stats_.overflows;
      trace_ = graph::Trace();
      values_.Clear();
      next_input_ = 0;
      stats_.ops_in_current = 0;
    }
    p.active = false;
    return;
  }
  const OpInfo& info = InfoFor(op);
  if (info.traits.ignored) {
    p.active = false;
    return;
  }
  locator_->Locate(site);
  const std::vector<graph::Frame>& frames = *site.frames;
  const uint64_t backward_of = site.backward_of;
  const uint32_t ordinal = site.ordinal;

  // The identity's hash, streamed; the identity itself is built only when
  // the graph has not seen this node (or a sync point needs its location).
  ts.args.Clear();
  ts.tensors.clear();
  EncodeArguments(inputs, info.traits.policy, ts.args, [&](const at::Tensor& t) { ts.tensors.push_back(t); });
  p.hash = IdentityHash(info.traits.name_state, ts.args.bytes(), ts.tensors, frames, backward_of, ordinal);
  locator_->Commit(site, p.hash);
  p.known = graph_.ContainsHash(p.hash) && !info.reads_value;
  p.inputs.reserve(ts.tensors.size());
  for (const at::Tensor& t : ts.tensors) p.inputs.push_back(Resolve(t));
  if (!p.known) {
    graph::NodeIdentity& id = p.identity;
    id.op = info.name;
    id.overload = info.overload;
    id.args = std::string(ts.args.bytes());
    id.inputs.reserve(ts.tensors.size());
    for (const at::Tensor& t : ts.tensors) id.inputs.push_back(MetaOf(t));
    id.location.frames = frames;
    id.location.backward_of = backward_of;
    id.location.ordinal = ordinal;
  }
  ts.tensors.clear();

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
  ThreadState& ts = tls;
  Pending& p = ts.pending;
  if (!p.active) return;  // started before this recorder was installed
  p.active = false;

  std::vector<at::Tensor>& outs = ts.outputs;
  outs.clear();
  for (const c10::IValue& v : outputs) {
    if (v.isTensor()) {
      if (v.toTensor().defined()) outs.push_back(v.toTensor());
    } else if (v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorList()) outs.push_back(t);
    }
  }
  if (outs.empty()) outs.swap(p.mutated);

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
  const auto num_outputs = static_cast<uint32_t>(outs.size());
  const uint32_t pos = p.known ? trace_.AddKnown(p.hash, std::move(p.inputs), num_outputs)
                               : trace_.Add(std::move(p.identity), std::move(p.inputs), num_outputs);
  TERRA_INTERNAL_CHECK(trace_.nodes()[pos].hash == p.hash,
                       "the streamed identity hash differs from StructuralHash");
  // Output metadata: always its hash (the graph notices when it changes),
  // the metadata itself only for new nodes.
  std::vector<graph::TensorMeta> out_metas;
  if (!p.known) {
    out_metas.reserve(outs.size());
    for (const at::Tensor& t : outs) out_metas.push_back(MetaOf(t));
  }
  trace_.SetOutputs(pos, std::move(out_metas), OutputsHash(outs));
  for (size_t k = 0; k < outs.size(); ++k) {
    Track(outs[k], graph::ValueRef::Output(pos, static_cast<uint32_t>(k)));
  }
  ++stats_.ops;
  ++stats_.ops_in_current;
  if (p.reads_value) AddSyncLocked(sync_value, sync_location, sync_op);
  outs.clear();
}

void Recorder::OnOpFailed(const c10::OperatorHandle& /*op*/) {
  tls.pending.active = false;
  tls.pending.mutated.clear();
}

void Recorder::OnSync(const at::Tensor& tensor, const std::string& kind) {
  graph::Location loc;
  locations_->CurrentFrames(&loc.frames);
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
  return EndIterationLocked(merge, graph::kEntry);
}

bool Recorder::EndPartialIteration(graph::NodeIndex after) {
  std::lock_guard<std::mutex> lock(mu_);
  return EndIterationLocked(true, after);
}

bool Recorder::EndIterationLocked(bool merge, graph::NodeIndex after) {
  overflowed_ = false;
  locator_->StartIteration();
  if ((trace_.size() == 0 && after == graph::kEntry) || !merge) {
    if (!merge) stats_.prologue_ops += trace_.size();
    stats_.ops_in_current = 0;
    trace_ = graph::Trace();
    values_.Clear();
    next_input_ = 0;
    return false;
  }
  const size_t nodes_before = graph_.NodeCount();
  const bool changed = graph_.AddTrace(trace_, after);
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
  const size_t last_size = trace_.size();
  trace_ = graph::Trace();
  trace_.Reserve(last_size + last_size / 8);
  values_.Clear();
  next_input_ = 0;
  return changed;
}

bool Recorder::IsStable(uint64_t k) const {
  std::lock_guard<std::mutex> lock(mu_);
  return graph_.IsStable(k);
}

uint64_t Recorder::Generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_.iterations;  // every merge, EndPartialIteration's included, counts one
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
