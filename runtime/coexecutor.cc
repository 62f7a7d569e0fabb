#include "runtime/coexecutor.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "graph/wire.h"

namespace terra::runtime {
namespace {

// In-place ops that change sizes, strides or storage, not only data.
bool MetadataMutating(const std::string& name) {
  static const char* const kOps[] = {
      "aten::resize_",     "aten::resize_as_", "aten::set_",       "aten::as_strided_",
      "aten::squeeze_",    "aten::unsqueeze_", "aten::t_",         "aten::transpose_",
      "aten::swapaxes_",   "aten::swapdims_",  "aten::detach_",    "aten::_resize_output_",
      "aten::resize_as_sparse_", "aten::sparse_resize_", "aten::sparse_resize_and_clear_",
      "aten::_coalesced_", "aten::as_strided_scatter",
  };
  for (const char* op : kOps) {
    if (name == op) return true;
  }
  return false;
}

// Moves the op's arguments off the top of the stack into `to`.
void MoveArguments(torch::jit::Stack* stack, size_t num_args, torch::jit::Stack* to) {
  const auto first = stack->end() - static_cast<std::ptrdiff_t>(num_args);
  to->insert(to->end(), std::make_move_iterator(first), std::make_move_iterator(stack->end()));
  stack->erase(first, stack->end());
}

}  // namespace

CoExecutor::CoExecutor(const graph::TraceGraph* graph, OpLocator* locator, Recorder* recorder,
                       bool synchronous, WaitWrapper around_wait)
    : graph_(graph),
      recorder_(recorder),
      validator_(graph, locator),
      executor_(synchronous, std::move(around_wait)),
      locator_(locator) {}

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
    if (arg.name() == "output_mask" && arg.type()->kind() == c10::TypeKind::ListType &&
        arg.type()->containedType(0)->kind() == c10::TypeKind::BoolType) {
      k.output_mask = static_cast<int>(i);
    }
  }
  k.writes = mutates;
  if (!all_tensors) {
    k.kind = Kind::kFetch;  // Python gets a number (or something else) computed from data
  } else if (any_view && !any_write && !mutates) {
    k.kind = Kind::kView;
  } else if (mutates && MetadataMutating(schema.name())) {
    // Changes the tensor's metadata: Python must see the new metadata now, so
    // it runs here, after a drain.
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

void CoExecutor::Diverge(const c10::OperatorHandle& op) {
  const bool debug = std::getenv("TERRA_DEBUG_DIVERGENCE") != nullptr;
  if (stats_.first_divergence.empty() || debug) {
    // What the graph expected instead, for the report (and the debug line).
    std::string expected;
    for (const graph::Edge& e : graph_->Successors(validator_.last_position())) {
      expected += e.to == graph::kExit ? std::string(" end-of-iteration")
                                       : " " + graph::QualifiedName(graph_->node(e.to).identity) + "@" +
                                             graph::ShortLocation(graph_->node(e.to).identity.location);
    }
    const std::string what = op.operator_name().name + "." + op.operator_name().overload_name +
                             " where the graph expected:" + expected;
    if (stats_.first_divergence.empty()) stats_.first_divergence = what;
    if (debug) std::fprintf(stderr, "terra: divergence at %s\n", what.c_str());
  }
  ++stats_.divergences;
  diverged_ = true;
  diverged_after_ = validator_.last_position();
  DrainAt(op.operator_name().name + " (fallback: left the TraceGraph)");
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

bool CoExecutor::RunsNow(c10::ArrayRef<c10::IValue> inputs) const {
  auto ready = [&](const at::Tensor& t) {
    return !t.defined() || (SlotOf(t) == nullptr && !executor_.MayBeQueued(t));
  };
  for (const c10::IValue& v : inputs) {
    if (v.isTensor()) {
      if (!ready(v.toTensor())) return false;
    } else if (v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorList()) {
        if (!ready(t)) return false;
      }
    } else if (v.isList()) {
      for (const c10::IValue& e : v.toList()) {
        if (e.isTensor() && !ready(e.toTensor())) return false;
      }
    }
  }
  return true;
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
  locator_->source().CurrentFrames(&frames_);
  graph::HashWriter h;
  for (const graph::Frame& f : frames_) {
    h.U64(f.code_id);
    h.U32(f.offset);
  }
  h.Bytes(what);
  auto [it, added] = wait_index_.try_emplace(h.state(), wait_points_.size());
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
  if (!diverged_ && validator_.AtIterationEnd()) {
    validator_.StartIteration();
    return Boundary::kFollowed;
  }
  if (!diverged_) {
    // Ended where the graph does not end: learn that edge to the exit.
    ++stats_.divergences;
    if (stats_.first_divergence.empty()) stats_.first_divergence = "the iteration ended early";
    diverged_after_ = validator_.position();
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
    Diverge(op);
    return false;
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
  switch (k) {
    case Kind::kView:
      ++stats_.eager;
      return false;
    case Kind::kFetch:
    case Kind::kEager:
      // Runs here, on real inputs: everything before it must have run.
      ++stats_.eager;
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
        DrainAt(op.operator_name().name + " (runs eagerly)");
        return false;
      }
      if (RunsNow(inputs)) {
        // Writes ordinary memory no queued Work touches, from ordinary
        // memory: run it here and now, in program order. The program may
        // write that memory directly next (torch.tensor stores its data
        // right after the deterministic fill of its fresh allocation).
        ++stats_.eager;
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

}  // namespace terra::runtime
