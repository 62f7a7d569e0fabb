#include "runtime/autograd_context.h"

#include <ATen/SequenceNumber.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>

#include <torch/csrc/autograd/anomaly_mode.h>
#include <torch/csrc/autograd/variable.h>

#include <cstring>
#include <limits>
#include <typeinfo>
#include <unordered_map>
#include <utility>

#include "graph/node.h"

namespace terra::runtime {

namespace {

thread_local torch::autograd::Node* named_function = nullptr;  // ScopedBackwardFunction's
DeferrableHookCheck deferrable_hook_check = nullptr;

BackwardContext ContextOf(torch::autograd::Node* node) {
  BackwardContext ctx;
  ctx.active = true;
  ctx.sequence_nr = node->sequence_nr();
  // AccumulateGrad and graph roots carry the maximum sequence number: they
  // have no forward op.
  ctx.has_forward = ctx.sequence_nr != std::numeric_limits<uint64_t>::max();
  // The mangled type name is the same in every process built from the same
  // sources (node->name() demangles, which costs microseconds).
  ctx.kind = graph::Hash64(typeid(*node).name());
  if (!ctx.has_forward) {
    if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(&*node)) {
      ctx.accumulates_into = acc->variable.unsafeGetTensorImpl();
    }
  }
  return ctx;
}

}  // namespace

BackwardContext CurrentBackward() {
  if (named_function != nullptr) return ContextOf(named_function);
  // An intrusive_ptr in PyTorch 2.15, a raw pointer in older releases; both
  // test and dereference alike.
  auto node = torch::autograd::get_current_node();
  if (!node) return {};
  return ContextOf(&*node);
}

ScopedBackwardFunction::ScopedBackwardFunction(void* node) : previous_(named_function) {
  named_function = static_cast<torch::autograd::Node*>(node);
}

ScopedBackwardFunction::~ScopedBackwardFunction() {
  named_function = static_cast<torch::autograd::Node*>(previous_);
}

void SetDeferrableHookCheck(DeferrableHookCheck check) { deferrable_hook_check = check; }

void RunPostAccumulateGradHooks(const at::Tensor& leaf) {
  if (auto& hook = torch::autograd::impl::post_acc_grad_hooks(leaf)) (*hook)(leaf);
}

uint64_t NextSequenceNr() { return at::sequence_number::peek(); }

namespace {

struct TypeVerdict {
  bool allowed = false;
  uint64_t hash = 0;
};

// Whether replaying a function of this type without running it is safe: the
// functions PyTorch generates from derivatives.yaml, AccumulateGrad and the
// in-place-on-view wrappers compute with ops only; anything else (a custom
// Function's PyNode or CppNode) may run code with effects of its own.
const TypeVerdict& VerdictOf(const torch::autograd::Node& node) {
  thread_local std::unordered_map<const std::type_info*, TypeVerdict> verdicts;
  const std::type_info* type = &typeid(node);
  auto it = verdicts.find(type);
  if (it != verdicts.end()) return it->second;
  const char* name = type->name();
  TypeVerdict v;
  v.hash = graph::Hash64(name);
  v.allowed = std::strncmp(name, "N5torch8autograd9generated", 26) == 0 ||
              dynamic_cast<const torch::autograd::AccumulateGrad*>(&node) != nullptr ||
              std::strstr(name, "CopySlices") != nullptr || std::strstr(name, "CopyBackwards") != nullptr;
  return verdicts.emplace(type, v).first->second;
}

}  // namespace

AutogradGraphWalk WalkAutogradGraph(const at::Tensor& root) {
  AutogradGraphWalk walk;
  if (!root.defined() || !root.requires_grad()) {
    walk.why = "the root does not require grad";
    return walk;
  }
  torch::autograd::Node* first = root.grad_fn().get();
  if (first == nullptr) {
    walk.why = "the root is a leaf";
    return walk;
  }
  if (torch::autograd::AnomalyMode::is_enabled()) {
    walk.why = "anomaly mode";
    return walk;
  }
  std::unordered_map<const torch::autograd::Node*, uint32_t> seen;
  std::vector<torch::autograd::Node*> stack{first};
  seen.emplace(first, 0);
  graph::HashWriter h;
  while (!stack.empty()) {
    torch::autograd::Node* node = stack.back();
    stack.pop_back();
    walk.nodes.push_back(node);
    const TypeVerdict& verdict = VerdictOf(*node);
    if (!verdict.allowed) {
      walk.why = "a custom autograd function";
      return walk;
    }
    if (!node->pre_hooks().empty() || !node->post_hooks().empty() || !node->tensor_pre_hooks().empty() ||
        !node->retains_grad_hooks().empty()) {
      walk.why = "a hook";
      return walk;
    }
    h.U64(verdict.hash);
    h.U32(node->num_inputs());
    if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(node)) {
      const at::Tensor& leaf = acc->variable;
      const bool hooked = torch::autograd::impl::post_acc_grad_hooks(leaf) != nullptr;
      if (hooked && (deferrable_hook_check == nullptr || !deferrable_hook_check(leaf))) {
        walk.why = "a hook";
        return walk;
      }
      const bool had = leaf.grad().defined();
      h.U8(had ? 1 : 0);
      h.U8(hooked ? 1 : 0);
      walk.leaves.push_back(leaf);
      walk.leaf_functions.push_back(node);
    }
    const auto& edges = node->next_edges();
    h.U32(static_cast<uint32_t>(edges.size()));
    // Pushed in reverse, so the walk visits edges in order.
    for (auto e = edges.rbegin(); e != edges.rend(); ++e) {
      torch::autograd::Node* next = e->function.get();
      if (next == nullptr) {
        h.U32(0);
        continue;
      }
      auto [it, added] = seen.try_emplace(next, static_cast<uint32_t>(seen.size()));
      h.U32(it->second + 1);
      h.U32(e->input_nr);
      if (added) stack.push_back(next);
    }
  }
  walk.eligible = true;
  walk.signature = h.state();
  return walk;
}

void ReleaseSavedVariables(const AutogradGraphWalk& walk) {
  for (void* node : walk.nodes) {
    auto* n = static_cast<torch::autograd::Node*>(node);
    n->will_release_variables();
    n->release_variables();
  }
}

}  // namespace terra::runtime
