#include "runtime/coexecutor.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <utility>

#include "graph/wire.h"
#include "runtime/op_arguments.h"

namespace terra::runtime {
namespace {

template <size_t N>
bool Listed(const char* const (&ops)[N], const std::string& name) {
  for (const char* op : ops) {
    if (name == op) return true;
  }
  return false;
}

// In-place ops that change sizes, strides or storage, not only data.
bool MetadataMutating(const std::string& name) {
  static const char* const kOps[] = {
      "aten::resize_",     "aten::resize_as_", "aten::set_",       "aten::as_strided_",
      "aten::squeeze_",    "aten::unsqueeze_", "aten::t_",         "aten::transpose_",
      "aten::swapaxes_",   "aten::swapdims_",  "aten::detach_",    "aten::_resize_output_",
      "aten::resize_as_sparse_", "aten::sparse_resize_", "aten::sparse_resize_and_clear_",
      "aten::_coalesced_", "aten::as_strided_scatter",
  };
  return Listed(kOps, name);
}

// Of those, the ones that change only the sizes, strides, offset or
// autograd flags of the tensor they are given, never its storage or data.
bool RestridesOnly(const std::string& name) {
  static const char* const kOps[] = {
      "aten::as_strided_", "aten::squeeze_",  "aten::unsqueeze_", "aten::t_",
      "aten::transpose_",  "aten::swapaxes_", "aten::swapdims_",  "aten::detach_",
  };
  return Listed(kOps, name);
}

// Whether the leaf's memory is ordinary, allocator-owned memory: what a
// backward segment names by the leaf (ExternalSource::kLeafData).
bool OrdinaryLeafMemory(const at::Tensor& leaf) {
  return leaf.has_storage() && SlotOf(leaf) == nullptr && !DirectMemory(leaf);
}

bool AnyRequiresGrad(c10::ArrayRef<c10::IValue> inputs) {
  return !ForEachTensorArgument(inputs, [](const at::Tensor& t, uint32_t, int32_t) { return !t.requires_grad(); });
}

// A recorded non-tensor argument into a segment's content hash (tensors, and
// their placeholders, are hashed by the caller).
void HashValue(const c10::IValue& v, graph::HashWriter& h) {
  h.Bytes(v.tagKind());
  if (v.isBool()) {
    h.U8(v.toBool() ? 1 : 0);
  } else if (v.isInt()) {
    h.I64(v.toInt());
  } else if (v.isDouble()) {
    h.U64(std::bit_cast<uint64_t>(v.toDouble()));
  } else if (v.isString()) {
    h.Bytes(v.toStringRef());
  } else if (v.isDevice()) {
    h.I64(static_cast<int64_t>(v.toDevice().type()) << 16 | static_cast<uint16_t>(v.toDevice().index()));
  } else if (v.isTensorList()) {
    h.U64(v.toTensorList().size());
  } else if (v.isList()) {
    const c10::List<c10::IValue> list = v.toList();
    h.U64(list.size());
    for (const c10::IValue& e : list) HashValue(e, h);
  } else if (v.isComplexDouble()) {
    const c10::complex<double> c = v.toComplexDouble();
    h.U64(std::bit_cast<uint64_t>(c.real()));
    h.U64(std::bit_cast<uint64_t>(c.imag()));
  }
}

void HashLayout(const TensorLayout& l, graph::HashWriter& h) {
  h.U32(static_cast<uint32_t>(l.sizes.size()));
  for (int64_t s : l.sizes) h.I64(s);
  for (int64_t s : l.strides) h.I64(s);
  h.I64(l.offset);
  h.U64(l.keys.raw_repr());
  h.U16(static_cast<uint16_t>(c10::typeMetaToScalarType(l.dtype)));
  h.U8(l.wrapped_number ? 1 : 0);
}

// Moves the op's arguments off the top of the stack into `to`.
void MoveArguments(torch::jit::Stack* stack, size_t num_args, torch::jit::Stack* to) {
  const auto first = stack->end() - static_cast<std::ptrdiff_t>(num_args);
  to->insert(to->end(), std::make_move_iterator(first), std::make_move_iterator(stack->end()));
  stack->erase(first, stack->end());
}

}  // namespace

CoExecutor::CoExecutor(const graph::TraceGraph* graph, OpLocator* locator, Recorder* recorder,
                       bool synchronous, WaitWrapper around_wait, std::shared_ptr<BackwardMemory> learned)
    : graph_(graph),
      recorder_(recorder),
      validator_(graph, locator),
      executor_(synchronous, std::move(around_wait)),
      locator_(locator),
      // On by default; TERRA_BACKWARD_SEGMENTS=0 keeps every backward op by
      // op (docs/coexecution.md, "The backward as one unit"). Debug mode runs
      // each op as it is issued, so it has no segments.
      segments_enabled_(!synchronous && [] {
        const char* v = std::getenv("TERRA_BACKWARD_SEGMENTS");
        return v == nullptr || std::string_view(v) != "0";
      }()),
      debug_segments_([] {
        const char* v = std::getenv("TERRA_DEBUG_SEGMENTS");
        return v == nullptr ? 0 : std::string_view(v) == "2" ? 2 : 1;
      }()),
      memory_(learned != nullptr ? std::move(learned) : std::make_shared<BackwardMemory>()) {
  if (segments_enabled_) executor_.set_commit_observer([this](const Work& work) { OnCommit(work); });
}

CoExecutor::~CoExecutor() {
  try {
    executor_.Drain();
  } catch (...) {
    // Leaving: the error was the program's to see at its next fetch.
  }
}

const CoExecutor::OpKind& CoExecutor::KindOf(const c10::OperatorHandle& op) {
  const c10::OperatorName* key = &op.operator_name();
  auto it = kinds_.find(key);
  if (it != kinds_.end()) return it->second;
  OpKind k;
  const c10::FunctionSchema& schema = op.schema();
  bool all_tensors = true;
  bool any_view = false;
  bool any_write = false;
  for (const c10::Argument& ret : schema.returns()) {
    const c10::TypePtr& type = ret.type();
    const bool tensor = type->kind() == c10::TypeKind::TensorType;
    const bool list = type->kind() == c10::TypeKind::ListType &&
                      type->containedType(0)->kind() == c10::TypeKind::TensorType;
    if (!tensor && !list) all_tensors = false;
    if (list) k.list_return = true;
    if (tensor) ++k.tensor_returns;
    if (ret.alias_info() != nullptr) (ret.alias_info()->isWrite() ? any_write : any_view) = true;
  }
  bool mutates = false;
  for (size_t i = 0; i < schema.arguments().size(); ++i) {
    const c10::Argument& arg = schema.arguments()[i];
    if (arg.alias_info() != nullptr && arg.alias_info()->isWrite()) mutates = true;
    const c10::TypePtr& type = arg.type();
    if (type->kind() == c10::TypeKind::GeneratorType ||
        (type->kind() == c10::TypeKind::OptionalType &&
         type->containedType(0)->kind() == c10::TypeKind::GeneratorType)) {
      k.generator_arg = static_cast<int>(i);
    }
    if (arg.name() == "output_mask" && arg.type()->kind() == c10::TypeKind::ListType &&
        arg.type()->containedType(0)->kind() == c10::TypeKind::BoolType) {
      k.output_mask = static_cast<int>(i);
    }
  }
  k.writes = mutates;
  if (!all_tensors) {
    k.kind = Kind::kFetch;  // Python gets a number (or something else) computed from data
  } else if (schema.name().rfind("aten::_nested", 0) == 0) {
    // Makes or takes nested tensors, which no future stands for (Strided).
    k.kind = Kind::kEager;
  } else if (any_view && !any_write && !mutates) {
    k.kind = Kind::kView;
  } else if (mutates && RestridesOnly(schema.name())) {
    // Changes only the metadata of the tensor it is given (nn.GRU's
    // batch_first output.transpose_(0, 1)): runs here, at once, where no
    // queued Work holds that tensor itself (TakeOver).
    k.kind = Kind::kRestride;
  } else if (mutates && MetadataMutating(schema.name())) {
    // Changes the tensor's metadata and storage: Python must see them now,
    // so it runs here, after a drain.
    k.kind = Kind::kEager;
  } else if (mutates) {
    // Each return must alias a written argument, which Python gets back. An
    // out= op may resize its out argument: it is in place only where the
    // node's recorded outputs have the out arguments' layout (TakeOver).
    k.kind = Kind::kInPlace;
    k.out_variant = schema.overload_name() == "out" ||
                    schema.overload_name().find("_out") != std::string::npos;
    for (const c10::Argument& ret : schema.returns()) {
      int found = -1;
      if (ret.alias_info() != nullptr && ret.alias_info()->isWrite()) {
        const auto& args = schema.arguments();
        for (size_t i = 0; i < args.size(); ++i) {
          if (args[i].alias_info() != nullptr &&
              args[i].alias_info()->beforeSets() == ret.alias_info()->beforeSets()) {
            found = static_cast<int>(i);
          }
        }
      }
      if (found < 0) k.kind = Kind::kEager;  // returns something new besides writing
      k.returned_args.push_back(found);
    }
  } else if (any_view || (k.list_return && schema.returns().size() != 1)) {
    k.kind = Kind::kEager;
  } else {
    k.kind = Kind::kCompute;
  }
  return kinds_.emplace(key, std::move(k)).first->second;
}

void CoExecutor::Diverge(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> inputs) {
  std::string what = op.operator_name().name;
  if (!op.operator_name().overload_name.empty()) what += "." + op.operator_name().overload_name;
  // The first tensor input's shape: a new shape is the commonest new path.
  ForEachTensorArgument(inputs, [&](const at::Tensor& t, uint32_t, int32_t) {
    if (!t.defined()) return true;
    what += " [";
    for (size_t d = 0; d < static_cast<size_t>(t.dim()); ++d) what += (d ? "x" : "") + std::to_string(t.size(d));
    what += "]";
    return false;
  });
  if (std::getenv("TERRA_DEBUG_DIVERGENCE") != nullptr) {
    std::string expected;
    for (const graph::Edge& e : graph_->Successors(validator_.last_position())) {
      expected += e.to == graph::kExit ? std::string(" end-of-iteration")
                                       : " " + graph::QualifiedName(graph_->node(e.to).identity) + "@" +
                                             graph::ShortLocation(graph_->node(e.to).identity.location);
    }
    std::fprintf(stderr, "terra: divergence at %s where the graph expected:%s\n", what.c_str(), expected.c_str());
  }
  DivergeHere(what, validator_.last_position());
}

uint64_t CoExecutor::LocateHere(const std::string& what) {
  locator_->source().CurrentFrames(&frames_);
  graph::HashWriter h;
  for (const graph::Frame& f : frames_) {
    h.U64(f.code_id);
    h.U32(f.offset);
  }
  h.Bytes(what);
  return h.state();
}

void CoExecutor::NoteFallback(const std::string& what, graph::NodeIndex after) {
  const uint64_t key = graph::CombineWord(LocateHere(what), after);
  auto [it, added] = fallback_index_.try_emplace(key, fallback_points_.size());
  if (added) fallback_points_.push_back(FallbackPoint{frames_, what, after, 0});
  ++fallback_points_[it->second].count;
}

void CoExecutor::DivergeHere(const std::string& what, graph::NodeIndex after) {
  NoteFallback(what, after);
  ++stats_.divergences;
  if (learning_ && learning_->failed == nullptr) learning_->failed = "the backward left the TraceGraph";
  diverged_ = true;
  diverged_after_ = after;
  DrainAt(what + " (fallback: left the TraceGraph)");
  executor_.RestoreProgramThreads();  // the rest of the iteration runs here
}

bool CoExecutor::OutsQueueable(const OpKind& kind, const graph::GraphNode& node,
                               c10::ArrayRef<c10::IValue> inputs, std::vector<bool>* grow) const {
  grow->clear();
  if (node.outputs_vary || node.outputs.size() != kind.returned_args.size()) return false;
  for (size_t i = 0; i < kind.returned_args.size(); ++i) {
    const c10::IValue& v = inputs[static_cast<size_t>(kind.returned_args[i])];
    if (!v.isTensor() || !v.toTensor().defined()) return false;
    const at::Tensor& t = v.toTensor();
    const graph::TensorMeta& m = node.outputs[i];
    const bool keeps = t.sizes().equals(m.sizes) && t.strides().equals(m.strides);
    // Growing: a queued Work holds an ordinary tensor itself (a future only
    // through its slot, with the layout it had), so growing one it holds
    // would change what that Work reads.
    if (!keeps && ((SlotOf(t) == nullptr && executor_.MayBeQueued(t)) || t.numel() != 0 ||
                   !t.has_storage() || t.storage().use_count() != 1 ||
                   t.scalar_type() != static_cast<c10::ScalarType>(m.dtype))) {
      return false;
    }
    grow->push_back(!keeps);
  }
  return true;
}

bool CoExecutor::Strided(const graph::GraphNode& node) const {
  if (!validator_.last_inputs_strided()) return false;
  // A non-strided output was recorded with sizes and no strides. A nested
  // one has neither, as a 0-dim tensor would: the ops that make nested
  // tensors from strided ones are kEager by name (KindOf).
  for (const graph::TensorMeta& m : node.outputs) {
    if (m.strides.size() != m.sizes.size()) return false;
  }
  return true;
}

bool CoExecutor::DrawsFromDefaultGenerator(const OpKind& kind, c10::ArrayRef<c10::IValue> inputs) {
  if (kind.generator_arg < 0) return false;
  const c10::IValue& g = inputs[static_cast<size_t>(kind.generator_arg)];
  return !g.isGenerator() || g.toGenerator() == at::detail::getDefaultCPUGenerator();
}

bool CoExecutor::RunsInProgramTime(const OpKind& kind, c10::ArrayRef<c10::IValue> inputs) const {
  // The default generator's draws stay in the executor's program order:
  // the calls that read or reseed it (torch.manual_seed, get_rng_state)
  // drain first (terra/_sync.py, kind "rng").
  if (kind.generator_arg >= 0 && !DrawsFromDefaultGenerator(kind, inputs)) return true;
  for (int arg : kind.returned_args) {
    const c10::IValue& v = inputs[static_cast<size_t>(arg)];
    if (v.isTensor() && DirectMemory(v.toTensor())) return true;
  }
  return false;
}

bool CoExecutor::RunsNow(const OpKind& kind, c10::ArrayRef<c10::IValue> inputs) const {
  // A random fill (torch.randn's normal_ on its fresh tensor) draws after
  // the random ops still queued, on the executor.
  if (DrawsFromDefaultGenerator(kind, inputs)) return false;
  return ForEachTensorArgument(inputs, [&](const at::Tensor& t, uint32_t, int32_t) {
    return SlotOf(t) == nullptr && !executor_.MayBeQueued(t);
  });
}

void CoExecutor::OnOp(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> inputs) {
  if (diverged_) recorder_->OnOp(op, inputs);
}

void CoExecutor::OnOpEnd(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> outputs) {
  if (diverged_) recorder_->OnOpEnd(op, outputs);
}

void CoExecutor::OnOpFailed(const c10::OperatorHandle& op) {
  if (diverged_) recorder_->OnOpFailed(op);
}

void CoExecutor::DrainAt(const std::string& what) {
  const double before = executor_.drain_wait_seconds();
  executor_.Drain();  // a failure of the executor's surfaces here
  ChargeWait(executor_.drain_wait_seconds() - before, what);
}

void CoExecutor::AwaitAt(c10::ArrayRef<c10::IValue> values, const std::string& what) {
  const double before = executor_.drain_wait_seconds();
  executor_.AwaitValues(values);  // a failure of the executor's surfaces here
  ChargeWait(executor_.drain_wait_seconds() - before, what);
}

void CoExecutor::ChargeWait(double waited, const std::string& what) {
  auto [it, added] = wait_index_.try_emplace(LocateHere(what), wait_points_.size());
  if (added) wait_points_.push_back(WaitPoint{frames_, what, 0, 0});
  WaitPoint& point = wait_points_[it->second];
  ++point.count;
  point.wait_s += waited;
}

void CoExecutor::Fetch(const char* what) {
  ++stats_.fetches;
  DrainAt(what);
}

void CoExecutor::FetchValue(const at::Tensor& t, const char* what) {
  ++stats_.fetches;
  AwaitAt(c10::IValue(t), what);
}

CoExecutor::Boundary CoExecutor::EndIteration() {
  learning_.reset();
  op_ordinal_ = 0;
  path_hash_ = 0;
  fed_hash_ = 0;
  for (size_t i = 0; i < records_used_; ++i) {
    records_[i].outputs.clear();
    records_[i].slot_args.clear();
    records_[i].held.clear();
  }
  records_used_ = 0;
  std::fill(record_at_.begin(), record_at_.end(), -1);
  record_all_ = record_next_;
  record_next_ = false;
  if (!diverged_ && validator_.AtIterationEnd()) {
    validator_.StartIteration();
    return Boundary::kFollowed;
  }
  if (!diverged_) {
    // Ended where the graph does not end: learn that edge to the exit.
    ++stats_.divergences;
    diverged_after_ = validator_.position();
    NoteFallback("end of iteration", diverged_after_);
  }
  executor_.Drain();
  recorder_->EndPartialIteration(diverged_after_);
  diverged_ = false;
  validator_.StartIteration();
  return Boundary::kLearned;
}

bool CoExecutor::TakeOver(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  if (diverged_) return false;  // the rest of this iteration runs eagerly
  const size_t num_args = op.schema().arguments().size();
  c10::ArrayRef<c10::IValue> inputs(stack->data() + stack->size() - num_args, num_args);
  const Validator::Outcome outcome = validator_.Check(op, inputs, /*commit_mismatch=*/false);
  if (outcome == Validator::Outcome::kIgnored) return false;
  if (outcome == Validator::Outcome::kDiverged) {
    Diverge(op, inputs);
    return false;
  }
  if (segments_enabled_) {
    ++op_ordinal_;
    path_hash_ = graph::CombineWord(path_hash_, static_cast<uint64_t>(validator_.position()) + 1);
    if (const uint64_t fed = validator_.last_fed_hash();
        fed != 0 && at::GradMode::is_enabled() && AnyRequiresGrad(inputs)) {
      // A fed value of an op that recorded an autograd function: its
      // backward function may have kept it (a scale, a slice's bounds).
      fed_hash_ = graph::CombineWord(fed_hash_, fed);
    }
  }
  const graph::GraphNode& node = graph_->node(validator_.position());
  const OpKind& kind = KindOf(op);
  Kind k = kind.kind;
  // Outputs Python cannot be handed in advance: metadata that varies, or
  // undefined members that no output mask foretells.
  const c10::List<bool>* mask = nullptr;
  c10::List<bool> mask_value;
  if (k == Kind::kCompute && !node.outputs_vary && !kind.list_return &&
      node.outputs.size() != kind.tensor_returns && kind.output_mask >= 0 &&
      inputs[static_cast<size_t>(kind.output_mask)].isBoolList()) {
    // convolution_backward and the like: the returns where the mask is false
    // are undefined, the others are the node's recorded outputs, in order.
    mask_value = inputs[static_cast<size_t>(kind.output_mask)].toBoolList();
    size_t defined = 0;
    for (bool b : mask_value) defined += b ? 1 : 0;
    if (mask_value.size() == kind.tensor_returns && defined == node.outputs.size()) mask = &mask_value;
  }
  if (k == Kind::kCompute && mask == nullptr &&
      (node.outputs_vary || node.outputs.size() != node.num_outputs ||
       (!kind.list_return && node.outputs.size() != kind.tensor_returns))) {
    k = Kind::kEager;
  }
  if ((k == Kind::kCompute || k == Kind::kInPlace || k == Kind::kRestride) && !Strided(node)) {
    // Futures and the executor's slots are plain strided memory: a sparse
    // or nested tensor in or out (nn.Embedding(sparse=True)'s gradient,
    // SparseAdam's coalesce) runs here, on real values.
    k = Kind::kEager;
  }
  if ((k == Kind::kCompute || k == Kind::kInPlace) && RunsInProgramTime(kind, inputs)) {
    // Python may next read or write that generator or memory directly; no
    // queued Work holds either (the copies of DirectMemory reads).
    ++stats_.eager;
    FailLearning("the backward draws from the program's generator or writes memory it holds directly");
    if (DrawsFromDefaultGenerator(kind, inputs)) {
      // Writes such memory with random numbers (np_backed.uniform_()): after
      // the queued draws.
      DrainAt(op.operator_name().name + " (runs eagerly: draws into memory the program holds)");
    } else {
      AwaitAt(inputs, op.operator_name().name + " (runs now: a generator or memory the program holds)");
    }
    return false;
  }
  if (k == Kind::kRestride) {
    // A queued Work holds a future's memory through its slot, with the
    // layout the program's tensor had when the Work was committed, and an
    // ordinary tensor itself: restriding a future, or an ordinary tensor no
    // queued Work touches, changes nothing a queued Work sees.
    const bool now = ForEachTensorArgument(inputs, [&](const at::Tensor& t, uint32_t, int32_t) {
      return SlotOf(t) != nullptr || !executor_.MayBeQueued(t);
    });
    if (!now) {
      // Once the queued Works that touch the tensor's memory have run, none
      // holds it: restride here then (a random fill of a fresh tensor is
      // queued, and `torch.randn(3, 1).t_()` waits for that fill alone).
      ++stats_.eager;
      FailLearning("the backward reads a value or runs an op eagerly");
      AwaitAt(inputs, op.operator_name().name + " (restrides a tensor queued ops hold)");
      return false;
    }
    k = Kind::kView;
  }
  switch (k) {
    case Kind::kView:
      ++stats_.eager;
      return false;
    case Kind::kRestride:  // decided above
    case Kind::kFetch:
    case Kind::kEager:
      // Runs here, on real inputs: everything before it must have run.
      ++stats_.eager;
      FailLearning("the backward reads a value or runs an op eagerly");
      if (k == Kind::kFetch && !kind.writes) {
        // Reads only: waits for the ops that write its inputs, and the
        // executor goes on with the rest meanwhile.
        ++stats_.fetches;
        AwaitAt(inputs, op.operator_name().name);
      } else if (k == Kind::kFetch) {
        ++stats_.fetches;
        DrainAt(op.operator_name().name);
      } else {
        DrainAt(op.operator_name().name + " (runs eagerly)");
      }
      return false;
    case Kind::kInPlace: {
      std::vector<bool> grow;
      if (kind.out_variant && !OutsQueueable(kind, node, inputs, &grow)) {
        // The out argument is resized: Python must see its new metadata.
        ++stats_.eager;
        FailLearning("the backward resizes an out= argument");
        DrainAt(op.operator_name().name + " (runs eagerly)");
        return false;
      }
      if (RunsNow(kind, inputs)) {
        // Writes ordinary memory no queued Work touches, from ordinary
        // memory: run it here and now, in program order. The program may
        // write that memory directly next (torch.tensor stores its data
        // right after the deterministic fill of its fresh allocation).
        ++stats_.eager;
        FailLearning("the backward writes memory no Work holds");
        return false;
      }
      // Python gets the written arguments back, as eager returns them.
      torch::jit::Stack results;
      for (int arg : kind.returned_args) results.push_back(inputs[static_cast<size_t>(arg)]);
      Work& work = executor_.Next();
      work.op = op;
      work.location = &node.identity.location;
      for (size_t i = 0; i < grow.size(); ++i) {
        if (!grow[i]) continue;
        // What the resize would do, here and now: the program's tensor gets
        // the recorded layout on a new future, which the executor allocates
        // before the op writes it.
        const graph::TensorMeta& m = node.outputs[i];
        FutureOutput unused;
        at::Tensor grown = executor_.NewFuture(m, &unused);
        work.fresh.emplace_back(c10::intrusive_ptr<Slot>::reclaim_copy(SlotOf(grown)), &m);
        c10::TensorImpl* impl = inputs[static_cast<size_t>(kind.returned_args[i])].toTensor().unsafeGetTensorImpl();
        impl->set_storage_keep_dtype(grown.storage());
        impl->set_sizes_and_strides(m.sizes, m.strides, 0);
      }
      MoveArguments(stack, num_args, &work.inputs);
      for (c10::IValue& r : results) stack->push_back(std::move(r));
      executor_.Commit();
      ++stats_.submitted;
      return true;
    }
    case Kind::kCompute: {
      Work& work = executor_.Next();
      work.op = op;
      work.location = &node.identity.location;
      MoveArguments(stack, num_args, &work.inputs);
      if (kind.list_return) {
        c10::List<at::Tensor> list;
        list.reserve(node.outputs.size());
        for (const graph::TensorMeta& m : node.outputs) {
          work.futures.emplace_back();
          list.push_back(executor_.NewFuture(m, &work.futures.back()));
        }
        stack->push_back(c10::IValue(std::move(list)));
      } else if (mask != nullptr) {
        size_t next = 0;
        for (bool defined : *mask) {
          if (!defined) {
            stack->push_back(c10::IValue(at::Tensor()));
            continue;
          }
          work.futures.emplace_back();
          stack->push_back(executor_.NewFuture(node.outputs[next++], &work.futures.back()));
        }
      } else {
        for (const graph::TensorMeta& m : node.outputs) {
          work.futures.emplace_back();
          stack->push_back(executor_.NewFuture(m, &work.futures.back()));
        }
      }
      executor_.Commit();
      ++stats_.submitted;
      return true;
    }
  }
  return false;
}

// ---- Backward segments ---------------------------------------------------

void CoExecutor::NoteNotReplayed(const char* why) {
  if (stats_.backward_not_replayed.empty()) stats_.backward_not_replayed = why;
}

void CoExecutor::OnCommit(const Work& work) {
  if (learning_ && !learning_->in_hook) {
    Capture(work);
    return;
  }
  if (work.segment) return;
  if (record_all_ || (op_ordinal_ < memory_->needed.size() && memory_->needed[op_ordinal_] != 0)) Record(work);
}

void CoExecutor::Record(const Work& work) {
  if (record_at_.size() <= op_ordinal_) record_at_.resize(op_ordinal_ + 1, -1);
  if (records_used_ == records_.size()) records_.emplace_back();
  record_at_[op_ordinal_] = static_cast<int32_t>(records_used_);
  ForwardRecord& r = records_[records_used_++];
  for (const FutureOutput& out : work.futures) r.outputs.push_back(out.slot.lock());
  for (const SlotArgument& a : work.slot_args) r.slot_args.push_back(a.slot);
  ForEachTensorArgument(work.inputs, [&](const at::Tensor& t, uint32_t arg, int32_t element) {
    if (t.has_storage()) r.held.push_back({arg, element, t.storage(), t.storage_offset(), false, {}});
    return true;
  });
  for (const Work::FedInput& f : work.fed) r.held.push_back({f.arg, f.element, f.storage, f.layout.offset, true, f.layout});
}

uint32_t CoExecutor::ExternalIndex(const ExternalSource& source) {
  std::vector<ExternalSource>& externals = learning_->externals;
  for (size_t i = 0; i < externals.size(); ++i) {
    if (externals[i] == source) return static_cast<uint32_t>(i);
  }
  externals.push_back(source);
  return static_cast<uint32_t>(externals.size() - 1);
}

void CoExecutor::Capture(const Work& work) {
  Learning& l = *learning_;
  if (l.failed != nullptr) return;
  if (!work.op || !work.fresh.empty()) {
    l.failed = "the backward grows an out= argument";
    return;
  }
  if (NextSequenceNr() != l.sequence_before) {
    // An op of the backward created an autograd function: a graph of its
    // own (create_graph), a recomputation (checkpointing).
    l.failed = "the backward records autograd functions (a graph of its own, a recomputation)";
    return;
  }
  BackwardSegment& segment = *l.learned.segment;
  const uint32_t index = static_cast<uint32_t>(segment.ops.size());
  SegmentOp op{*work.op, work.location, {}, {}, {}, {}};
  graph::HashWriter& h = l.content;
  h.U64(reinterpret_cast<uintptr_t>(&work.op->operator_name()));
  h.U64(reinterpret_cast<uintptr_t>(work.location));
  auto external = [&](SegmentArgument& a, const ExternalSource& source) {
    a.external = true;
    a.value = ExternalIndex(source);
    if (l.external_written.size() <= a.value) l.external_written.resize(a.value + 1, 0);
    if (a.written) l.external_written[a.value] = 1;
  };
  auto finish = [&](SegmentArgument& a) {
    h.U32(a.arg);
    h.U32(static_cast<uint32_t>(a.element));
    h.U8(a.external ? 1 : 0);
    h.U32(a.value);
    h.U8(a.written ? 1 : 0);
    HashLayout(a.layout, h);
    op.tensors.push_back(std::move(a));
  };
  // An ordinary tensor the Work holds: named by its storage and where it
  // starts in it (Learning::source_of_storage).
  auto held = [&](const at::Tensor& t, uint32_t arg, int32_t element) {
    // Memory fed by value: the Work holds a copy; the program's tensor names it.
    const Work::FedInput* fed = nullptr;
    for (const Work::FedInput& f : work.fed) {
      if (f.arg == arg && f.element == element) fed = &f;
    }
    const auto [first, last] =
        fed != nullptr ? l.source_of_storage.equal_range({fed->storage.unsafeGetStorageImpl(), fed->layout.offset})
                       : l.source_of_storage.equal_range(
                             {t.has_storage() ? t.storage().unsafeGetStorageImpl() : nullptr, t.storage_offset()});
    // The first forward op that held it there; fed: through the same view (a
    // replay copies what the forward's tensor covers, and only that).
    auto it = std::find_if(first, last, [&](const auto& entry) {
      const Learning::Named& n = entry.second;
      if (fed == nullptr) return n.source.kind != ExternalSource::kFed;
      return n.source.kind == ExternalSource::kFed && n.fed.sizes == fed->layout.sizes &&
             n.fed.strides == fed->layout.strides && n.fed.dtype == fed->layout.dtype;
    });
    if (it == last && first != last) {
      l.failed = fed != nullptr ? "the backward reads the program's own memory (numpy's) through another view"
                                : "the backward reads the program's own memory (numpy's) other than by value";
      return false;
    }
    if (it == last) {
      l.failed = "the backward reads a tensor the forward's co-executed ops did not";
      if (debug_segments_ > 0) {
        std::fprintf(stderr, "terra: %s reads a tensor of sizes %s at offset %lld no forward op held there\n",
                     work.op->operator_name().name.c_str(), c10::str(t.sizes()).c_str(),
                     static_cast<long long>(t.storage_offset()));
      }
      return false;
    }
    SegmentArgument a;
    a.arg = arg;
    a.element = element;
    a.written = work.Writes(arg);
    a.layout = TensorLayout::Of(t);
    a.layout.offset = 0;  // where the naming tensor starts this time (SegmentExternal::offset)
    external(a, it->second.source);
    finish(a);
    return true;
  };
  for (uint32_t i = 0; i < work.inputs.size(); ++i) {
    const c10::IValue& v = work.inputs[i];
    if (v.isTensor()) {
      if (v.toTensor().defined() && !held(v.toTensor(), i, -1)) return;
      op.inputs.emplace_back(at::Tensor());
      h.U8(1);
    } else if (v.isTensorList()) {
      const c10::List<at::Tensor> list = v.toTensorList();
      c10::List<at::Tensor> copy;
      copy.reserve(list.size());
      for (size_t j = 0; j < list.size(); ++j) {
        const at::Tensor t = list.get(j);
        if (t.defined() && !held(t, i, static_cast<int32_t>(j))) return;
        copy.push_back(at::Tensor());
      }
      h.U8(2);
      h.U64(list.size());
      op.inputs.emplace_back(std::move(copy));
    } else if (v.isList()) {
      const c10::List<c10::IValue> list = v.toList();
      c10::impl::GenericList copy(list.elementType());
      copy.reserve(list.size());
      for (size_t j = 0; j < list.size(); ++j) {
        const c10::IValue e = list.get(j);
        if (e.isTensor() && e.toTensor().defined()) {
          if (!held(e.toTensor(), i, static_cast<int32_t>(j))) return;
          copy.push_back(c10::IValue());
        } else {
          copy.push_back(e);
        }
      }
      HashValue(c10::IValue(copy), h);
      op.inputs.emplace_back(std::move(copy));
    } else {
      HashValue(v, h);
      op.inputs.push_back(v);
    }
  }
  for (const SlotArgument& sa : work.slot_args) {
    SegmentArgument a;
    a.arg = sa.arg;
    a.element = sa.element;
    a.written = work.Writes(sa.arg);
    a.layout = sa.layout;
    if (auto it = l.value_of_slot.find(sa.slot.get()); it != l.value_of_slot.end()) {
      a.value = it->second;
      segment.values[it->second].last_use = index;
    } else if (auto src = l.source_of_slot.find(sa.slot.get()); src != l.source_of_slot.end()) {
      external(a, src->second);
    } else {
      l.failed = "the backward reads a value the forward's co-executed ops did not";
      return;
    }
    finish(a);
  }
  for (const FutureOutput& out : work.futures) {
    c10::intrusive_ptr<Slot> slot = out.slot.lock();
    if (!slot) {
      l.failed = "an output was dropped before it was recorded";
      return;
    }
    const auto id = static_cast<uint32_t>(segment.values.size());
    segment.values.push_back(SegmentValue{*out.meta, out.nbytes, index, false, index});
    l.value_of_slot[slot.get()] = id;
    l.slots.push_back(std::move(slot));
    op.outputs.push_back(id);
    h.U32(id);
    h.U64(graph::MetasHash({*out.meta}));
  }
  if (debug_segments_ > 1) {
    // Each captured op and the content hash so far: diff two learnings to
    // see where they disagree.
    std::fprintf(stderr, "terra: segment op %u %s content %llx\n", index, op.op.operator_name().name.c_str(),
                 static_cast<unsigned long long>(h.state()));
    for (const SegmentArgument& a : op.tensors) {
      std::fprintf(stderr, "terra:   argument %u element %d %s %u offset %lld\n", a.arg, a.element,
                   a.external ? "external" : "internal", a.value, static_cast<long long>(a.layout.offset));
    }
  }
  segment.ops.push_back(std::move(op));
}

CoExecutor::BackwardStart CoExecutor::BackwardBegin(const at::Tensor& root, uint64_t hook_state) {
  if (!segments_enabled_ || diverged_ || learning_) return BackwardStart::kNotTaken;
  AutogradGraphWalk walk = WalkAutogradGraph(root);
  if (!walk.eligible) {
    NoteNotReplayed(walk.why);
    return BackwardStart::kNotTaken;
  }
  uint64_t key = graph::CombineWord(path_hash_, walk.signature);
  key = graph::CombineWord(key, fed_hash_);
  key = graph::CombineWord(key, static_cast<uint64_t>(validator_.position()) + 1);
  key = graph::CombineWord(key, hook_state);
  if (debug_segments_ > 0) {
    std::fprintf(stderr, "terra: backward path %llx graph %llx fed %llx at %u record_all %d\n",
                 static_cast<unsigned long long>(path_hash_), static_cast<unsigned long long>(walk.signature),
                 static_cast<unsigned long long>(fed_hash_), validator_.position(), record_all_ ? 1 : 0);
  }
  auto it = memory_->by_key.find(key);
  if (it != memory_->by_key.end() && it->second.ready) {
    if (Replay(it->second, walk)) return BackwardStart::kReplayed;
    record_next_ = true;
    NoteNotReplayed("a value the segment reads was not computed by a co-executed op this time");
    return BackwardStart::kNotTaken;
  }
  if (it != memory_->by_key.end() && it->second.disagreements > 2) return BackwardStart::kNotTaken;
  if (!record_all_) {
    record_next_ = true;  // learn it next time
    return BackwardStart::kNotTaken;
  }
  learning_ = std::make_unique<Learning>();
  Learning& l = *learning_;
  l.key = key;
  l.sequence_before = NextSequenceNr();
  l.learned.segment = std::make_shared<BackwardSegment>();
  l.walk = std::move(walk);
  l.grad_first_hook.assign(l.walk.leaves.size(), UINT32_MAX);
  for (size_t i = 0; i < l.walk.leaves.size(); ++i) {
    const at::Tensor& grad = l.walk.leaves[i].grad();
    l.grads_before.push_back(grad.defined() ? grad.unsafeGetTensorImpl() : nullptr);
    if (!grad.defined()) continue;
    const ExternalSource source{ExternalSource::kLeafGrad, 0, static_cast<uint32_t>(i), -1};
    if (Slot* slot = SlotOf(grad)) {
      l.source_of_slot.try_emplace(slot, source);
    } else if (grad.has_storage()) {
      l.source_of_storage.emplace(std::make_pair(grad.storage().unsafeGetStorageImpl(), grad.storage_offset()),
                                  Learning::Named{source, {}});
    }
  }
  // A leaf's own ordinary memory (a parameter) is named by the leaf, ahead
  // of the forward ops that held it: an in-place op on it before the
  // forward (an EMA's `ema.add_(p)`, the optimizer's update) is queued, and
  // so recorded, only when the executor still has work touching it, so
  // naming it by the first op that held it would change from one learning
  // to the next with the executor's lag, and the learnings never agree.
  for (size_t i = 0; i < l.walk.leaves.size(); ++i) {
    const at::Tensor& leaf = l.walk.leaves[i];
    if (!OrdinaryLeafMemory(leaf)) continue;
    l.source_of_storage.emplace(std::make_pair(leaf.storage().unsafeGetStorageImpl(), leaf.storage_offset()),
                                Learning::Named{ExternalSource{ExternalSource::kLeafData, 0, static_cast<uint32_t>(i), -1},
                                                {}});
  }
  for (uint32_t o = 0; o < record_at_.size(); ++o) {
    if (record_at_[o] < 0) continue;
    const ForwardRecord& r = records_[static_cast<size_t>(record_at_[o])];
    for (uint32_t k = 0; k < r.outputs.size(); ++k) {
      if (r.outputs[k]) l.source_of_slot.try_emplace(r.outputs[k].get(), ExternalSource{ExternalSource::kOutput, o, k, -1});
    }
    for (uint32_t k = 0; k < r.slot_args.size(); ++k) {
      l.source_of_slot.try_emplace(r.slot_args[k].get(), ExternalSource{ExternalSource::kSlotArg, o, k, -1});
    }
    for (const ForwardRecord::Held& held : r.held) {
      const ExternalSource source{held.fed ? ExternalSource::kFed : ExternalSource::kHeld, o, held.arg,
                                  held.element};
      l.source_of_storage.emplace(std::make_pair(held.storage.unsafeGetStorageImpl(), held.offset),
                                  Learning::Named{source, held.fed ? held.layout : TensorLayout()});
    }
  }
  return BackwardStart::kLearning;
}

void CoExecutor::BackwardEnd(bool completed) {
  if (!learning_) return;
  std::unique_ptr<Learning> owned = std::move(learning_);
  Learning& l = *owned;
  if (!completed || diverged_) return;
  LearnedBackward& entry = memory_->by_key[l.key];
  auto fail = [&](const char* why) {
    entry.disagreements = 3;  // not learnable: keep validating op by op
    entry.segment.reset();
    NoteNotReplayed(why);
  };
  if (debug_segments_ > 0) {
    std::fprintf(stderr, "terra: learned %zu ops, %zu externals, failed: %s\n", l.learned.segment->ops.size(),
                 l.externals.size(), l.failed != nullptr ? l.failed : "no");
  }
  if (l.failed != nullptr) return fail(l.failed);
  LearnedBackward& learned = l.learned;
  BackwardSegment& segment = *learned.segment;
  graph::HashWriter& h = l.content;
  for (uint32_t i = 0; i < l.walk.leaves.size(); ++i) {
    const at::Tensor& grad = l.walk.leaves[i].grad();
    if (l.grads_before[i] != nullptr) {
      if (!grad.defined() || grad.unsafeGetTensorImpl() != l.grads_before[i]) {
        return fail("a leaf's gradient was replaced, not accumulated in place");
      }
      continue;
    }
    if (!grad.defined()) continue;
    Slot* slot = SlotOf(grad);
    auto it = slot != nullptr ? l.value_of_slot.find(slot) : l.value_of_slot.end();
    if (it == l.value_of_slot.end()) return fail("a leaf's new gradient is not a value of the backward's ops");
    LearnedBackward::NewGrad g;
    g.leaf = i;
    g.value = it->second;
    g.layout = TensorLayout::Of(grad);
    g.hook = std::min<uint32_t>(l.grad_first_hook[i], static_cast<uint32_t>(learned.hooks.size()));
    segment.values[g.value].to_program = true;
    h.U32(g.leaf);
    h.U32(g.value);
    h.U32(g.hook);
    HashLayout(g.layout, h);
    learned.new_grads.push_back(std::move(g));
  }
  for (size_t n = 0; n < learned.new_grads.size(); ++n) {
    LearnedBackward::NewGrad& g = learned.new_grads[n];
    g.same_as = static_cast<uint32_t>(n);
    for (size_t m = 0; m < n && g.same_as == n; ++m) {
      if (learned.new_grads[m].value == g.value) g.same_as = static_cast<uint32_t>(m);
    }
  }
  for (const LearnedBackward::HookPoint& hp : learned.hooks) {
    h.U32(hp.after_op);
    h.U32(hp.leaf);
    h.U8(hp.issued ? 1 : 0);
    hp.before.Hash(h);
    hp.after.Hash(h);
  }
  for (uint32_t id = 0; id < segment.values.size(); ++id) {
    if (!segment.values[id].to_program) segment.ops[segment.values[id].last_use].frees.push_back(id);
  }
  segment.external_written = l.external_written;
  segment.external_written.resize(l.externals.size(), 0);
  for (const ExternalSource& e : l.externals) {
    h.U8(e.kind);
    h.U32(e.ordinal);
    h.U32(e.index);
    h.U32(static_cast<uint32_t>(e.element));
  }
  if (debug_segments_ > 1) {
    // Where each external comes from: diff two learnings that disagree.
    for (size_t i = 0; i < l.externals.size(); ++i) {
      const ExternalSource& e = l.externals[i];
      std::fprintf(stderr, "terra: external %zu kind %d ordinal %u index %u element %d\n", i,
                   static_cast<int>(e.kind), e.ordinal, e.index, e.element);
    }
  }
  learned.externals = l.externals;
  learned.end = Here();
  learned.end.Hash(h);
  learned.content = h.state();

  if (entry.segment && !entry.ready && entry.content == learned.content) {
    // Learned the same twice: replay it from now on.
    entry.ready = true;
    ++stats_.backward_learned;
    for (const ExternalSource& e : entry.externals) {
      if (e.kind == ExternalSource::kLeafGrad || e.kind == ExternalSource::kLeafData) continue;
      if (memory_->needed.size() <= e.ordinal) memory_->needed.resize(e.ordinal + 1, 0);
      memory_->needed[e.ordinal] = 1;
    }
    return;
  }
  if (entry.segment) ++entry.disagreements;
  const int disagreements = entry.disagreements;
  entry = std::move(learned);
  entry.disagreements = disagreements;
  record_next_ = true;  // confirm it next time
}

bool CoExecutor::QueueTask(std::function<void()> task, std::vector<at::Tensor> tensors, std::string where) {
  if (diverged_) return false;
  for (const at::Tensor& t : tensors) {
    if (SlotOf(t) != nullptr) return false;
  }
  Work& work = executor_.Next();
  work.task = std::move(task);
  for (at::Tensor& t : tensors) work.inputs.emplace_back(std::move(t));
  work.where = std::move(where);
  executor_.Commit();
  ++stats_.tasks_queued;
  return true;
}

void CoExecutor::HookBegin(const at::Tensor& leaf) {
  if (!learning_ || diverged_) return;
  Learning& l = *learning_;
  if (l.in_hook) {
    // A hook inside a hook (a backward of its own): its ops are not the
    // segment's either, but what to learn of it is not clear.
    ++l.nested_hooks;
    if (l.failed == nullptr) l.failed = "a gradient hook ran inside another";
    return;
  }
  const auto& leaves = l.walk.leaves;
  const auto found = std::find_if(leaves.begin(), leaves.end(), [&](const at::Tensor& t) {
    return t.unsafeGetTensorImpl() == leaf.unsafeGetTensorImpl();
  });
  if (found == leaves.end()) {
    FailLearning("a gradient hook of a tensor outside the backward's graph ran");
    return;
  }
  const auto hook = static_cast<uint32_t>(l.learned.hooks.size());
  // The leaves' new gradients so far: a replay sets them before this hook.
  for (size_t i = 0; i < leaves.size(); ++i) {
    if (l.grad_first_hook[i] == UINT32_MAX && l.grads_before[i] == nullptr && leaves[i].grad().defined()) {
      l.grad_first_hook[i] = hook;
    }
  }
  LearnedBackward::HookPoint& hp = l.learned.hooks.emplace_back();
  hp.after_op = static_cast<uint32_t>(l.learned.segment->ops.size());
  hp.leaf = static_cast<uint32_t>(found - leaves.begin());
  hp.before = Here();
  l.fetches_before_hook = stats_.fetches;
  l.in_hook = true;
}

void CoExecutor::HookEnd() {
  if (!learning_ || !learning_->in_hook) return;
  Learning& l = *learning_;
  if (l.nested_hooks > 0) {
    --l.nested_hooks;
    return;
  }
  l.in_hook = false;
  LearnedBackward::HookPoint& hp = l.learned.hooks.back();
  hp.after = Here();
  hp.issued = hp.after.ordinal != hp.before.ordinal || stats_.fetches != l.fetches_before_hook;
}

bool CoExecutor::Replay(LearnedBackward& learned, const AutogradGraphWalk& walk) {
  auto run = std::make_shared<SegmentRun>();
  std::vector<SegmentExternal>& externals = run->externals;
  externals.resize(learned.externals.size());
  for (size_t i = 0; i < learned.externals.size(); ++i) {
    const ExternalSource& src = learned.externals[i];
    SegmentExternal& e = externals[i];
    if (src.kind == ExternalSource::kLeafGrad) {
      const at::Tensor& grad = walk.leaves[src.index].grad();
      if (!grad.defined() || !grad.has_storage()) return false;
      if (Slot* slot = SlotOf(grad)) {
        e.slot = c10::intrusive_ptr<Slot>::reclaim_copy(slot);
      } else {
        e.storage = grad.storage();
        e.offset = grad.storage_offset();
      }
      continue;
    }
    if (src.kind == ExternalSource::kLeafData) {
      // Its memory now: ordinary, as when learned (a leaf's storage can be
      // swapped through `.data`; eager's backward reads the leaf's).
      const at::Tensor& leaf = walk.leaves[src.index];
      if (!OrdinaryLeafMemory(leaf)) return false;
      e.storage = leaf.storage();
      e.offset = leaf.storage_offset();
      continue;
    }
    if (src.ordinal >= record_at_.size() || record_at_[src.ordinal] < 0) return false;
    const ForwardRecord& r = records_[static_cast<size_t>(record_at_[src.ordinal])];
    if (src.kind == ExternalSource::kOutput) {
      if (src.index >= r.outputs.size() || !r.outputs[src.index]) return false;
      e.slot = r.outputs[src.index];
    } else if (src.kind == ExternalSource::kSlotArg) {
      if (src.index >= r.slot_args.size()) return false;
      e.slot = r.slot_args[src.index];
    } else {
      // The argument as this forward held it; fed by value this time exactly
      // where it was when the segment was learned (else the Work holds the
      // forward's copy, or the program's memory itself).
      const bool fed = src.kind == ExternalSource::kFed;
      const ForwardRecord::Held* match = nullptr;
      bool fed_now = false;
      for (const ForwardRecord::Held& held : r.held) {
        if (held.arg != src.index || held.element != src.element) continue;
        fed_now = fed_now || held.fed;
        if (held.fed == fed) match = &held;
      }
      if (match == nullptr || fed_now != fed) return false;
      if (fed) {
        // As it is now, as the op-by-op backward would copy it; unless a
        // queued Work writes it (`x.add_(1)` between forward and backward):
        // then only the executor's order gives eager's value.
        at::Tensor program_tensor = match->layout.On(match->storage);
        if (executor_.MayBeQueued(program_tensor)) return false;
        e.storage = CopyNow(program_tensor).storage();
      } else {
        e.storage = match->storage;
        e.offset = match->offset;
      }
    }
  }
  const BackwardSegment& segment = *learned.segment;
  const auto num_ops = static_cast<uint32_t>(segment.ops.size());
  // The leaves' new gradients: futures of the piece that computes them, set
  // on the leaves before the first hook that saw them in the learning.
  std::vector<at::Tensor> grads(learned.new_grads.size());
  std::vector<uint8_t> set(learned.new_grads.size(), 0);
  uint32_t begin = 0;
  auto commit_piece = [&](uint32_t end) {
    if (end == begin) return;
    Work& work = executor_.Next();
    work.segment = learned.segment;
    work.run = run;
    work.segment_begin = begin;
    work.segment_end = end;
    work.where = "loss.backward()";
    for (size_t n = 0; n < learned.new_grads.size(); ++n) {
      const LearnedBackward::NewGrad& g = learned.new_grads[n];
      const uint32_t producer = segment.values[g.value].produced_by;
      if (producer < begin || producer >= end) continue;
      at::Tensor future = g.same_as != n ? grads[g.same_as] : at::Tensor();
      if (!future.defined()) {
        work.futures.emplace_back();
        future = executor_.NewFuture(segment.values[g.value].meta, &work.futures.back());
        work.segment_futures.emplace_back(g.value, static_cast<uint32_t>(work.futures.size() - 1));
      }
      const TensorLayout& l = g.layout;
      const bool as_future = future.sizes().equals(l.sizes) && future.strides().equals(l.strides) && l.offset == 0;
      grads[n] = as_future ? future : l.On(future.storage());
    }
    executor_.Commit();
    ++stats_.submitted;
    begin = end;
    // Past a divergence the hooks' ops run eagerly: on real values.
    if (diverged_) DrainAt("loss.backward() (fallback: left the TraceGraph)");
  };
  auto set_grads = [&](uint32_t hook) {
    for (size_t n = 0; n < learned.new_grads.size(); ++n) {
      const LearnedBackward::NewGrad& g = learned.new_grads[n];
      if (set[n] != 0 || g.hook > hook) continue;
      set[n] = 1;
      walk.leaves[g.leaf].mutable_grad() = grads[n];
    }
  };
  size_t next_hook = 0;
  auto run_hooks = [&](size_t until) {
    for (; next_hook < until; ++next_hook) {
      const LearnedBackward::HookPoint& hp = learned.hooks[next_hook];
      set_grads(static_cast<uint32_t>(next_hook));
      // As the engine calls them: its AccumulateGrad evaluating, grad mode off.
      ScopedBackwardFunction evaluating(walk.leaf_functions[hp.leaf]);
      at::AutoGradMode no_grad(false);
      RunPostAccumulateGradHooks(walk.leaves[hp.leaf]);
    }
  };
  try {
    for (size_t i = 0; i < learned.hooks.size(); ++i) {
      const LearnedBackward::HookPoint& hp = learned.hooks[i];
      if (!hp.issued) continue;
      commit_piece(hp.after_op);
      if (!diverged_) MoveTo(hp.before);
      run_hooks(i + 1);
      if (!diverged_ && (validator_.position() != hp.after.position || path_hash_ != hp.after.path)) {
        DivergeHere("a gradient hook of a replayed backward (another path than learned)", validator_.position());
      }
    }
    commit_piece(num_ops);
    if (!diverged_) MoveTo(learned.end);
    run_hooks(learned.hooks.size());
  } catch (...) {
    // A hook raised: the backward raises it, as the engine would; the rest
    // of the iteration runs eagerly.
    if (!diverged_) DivergeHere("a gradient hook of a replayed backward raised", validator_.position());
    throw;
  }
  set_grads(UINT32_MAX);
  ReleaseSavedVariables(walk);
  ++stats_.backward_replayed;
  stats_.backward_ops_replayed += segment.ops.size();
  return true;
}

}  // namespace terra::runtime
