#include "runtime/validator.h"

#include <cstdio>
#include <cstdlib>

namespace terra::runtime {

Validator::Validator(const graph::TraceGraph* graph, LocationSource* locations)
    : graph_(graph), own_locator_(std::make_unique<OpLocator>(locations)), locator_(own_locator_.get()) {
  for (graph::NodeIndex i = 0; i < graph->NodeCount(); ++i) by_hash_.emplace(graph->node(i).hash, i);
}

Validator::Validator(const graph::TraceGraph* graph, OpLocator* locator)
    : graph_(graph), locator_(locator) {
  for (graph::NodeIndex i = 0; i < graph->NodeCount(); ++i) by_hash_.emplace(graph->node(i).hash, i);
}

const IdentityTraits& Validator::TraitsOf(const c10::OperatorHandle& op) {
  const c10::OperatorName* key = &op.operator_name();
  auto it = ops_.find(key);
  if (it != ops_.end()) return it->second;
  return ops_.emplace(key, IdentityTraitsOf(op)).first->second;
}

void Validator::StartIteration() {
  position_ = graph::kEntry;
  locator_->StartIteration();
}

bool Validator::AtIterationEnd() const {
  for (const graph::Edge& e : graph_->Successors(position_)) {
    if (e.to == graph::kExit) return true;
  }
  return false;
}

Validator::Outcome Validator::Check(const c10::OperatorHandle& op,
                                    c10::ArrayRef<c10::IValue> inputs, bool commit_mismatch) {
  // The same steps, in the same order, as Recorder::OnOp.
  OpSite site = locator_->Observe();
  const IdentityTraits& info = TraitsOf(op);
  if (info.ignored) {
    ++stats_.ignored;
    return Outcome::kIgnored;
  }
  locator_->Locate(site);
  args_.Clear();
  tensors_.clear();
  strided_ = true;
  EncodeArguments(inputs, info.policy, args_, [&](const at::Tensor& t) {
    const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
    tensors_.push_back(impl);
    strided_ = strided_ && impl->layout() == c10::kStrided && !impl->is_nested();
  });
  const uint64_t hash = IdentityHash(info.name_state, args_.bytes(), tensors_, *site.frames,
                                     site.backward_of, site.ordinal);

  last_position_ = position_;
  for (const graph::Edge& e : graph_->Successors(position_)) {
    if (e.to != graph::kExit && graph_->node(e.to).hash == hash) {
      position_ = e.to;
      locator_->Commit(site, hash);
      ++stats_.matched;
      return Outcome::kMatched;
    }
  }
  ++stats_.diverged;
  if (std::getenv("TERRA_DEBUG_DIVERGENCE") != nullptr) {
    std::fprintf(stderr, "terra: mismatch ordinal %u backward_of %llx frames %zu active %d fed %llx\n", site.ordinal,
                 (unsigned long long)site.backward_of, site.frames->size(), (int)site.backward.active,
                 (unsigned long long)args_.fed_hash());
    for (const auto& f : *site.frames) std::fprintf(stderr, "   frame %llx+%u\n", (unsigned long long)f.code_id, f.offset);
  }
  if (commit_mismatch) locator_->Commit(site, hash);
  auto it = by_hash_.find(hash);
  position_ = it != by_hash_.end() ? it->second : graph::kEntry;
  return Outcome::kDiverged;
}

}  // namespace terra::runtime
