#include "runtime/validator.h"

#include "runtime/autograd_context.h"

namespace terra::runtime {

Validator::Validator(const graph::TraceGraph* graph, LocationSource* locations)
    : graph_(graph), locations_(locations) {
  for (graph::NodeIndex i = 0; i < graph->NodeCount(); ++i) by_hash_.emplace(graph->node(i).hash, i);
}

const Validator::OpInfo& Validator::InfoFor(const c10::OperatorHandle& op) {
  const c10::OperatorName* key = &op.operator_name();
  auto it = ops_.find(key);
  if (it != ops_.end()) return it->second;
  OpInfo info;
  info.name_state = NameState(*key);
  info.policy = PolicyFor(op.schema());
  info.ignored = key->name.rfind("profiler::", 0) == 0;  // as in the recorder
  return ops_.emplace(key, info).first->second;
}

void Validator::StartIteration() {
  position_ = graph::kEntry;
  last_hash_ = 0;
  ordinals_.Reset();
}

bool Validator::AtIterationEnd() const {
  for (const graph::Edge& e : graph_->Successors(position_)) {
    if (e.to == graph::kExit) return true;
  }
  return false;
}

Validator::Outcome Validator::Check(const c10::OperatorHandle& op,
                                    c10::ArrayRef<c10::IValue> inputs) {
  // The same steps, in the same order, as Recorder::OnOp.
  const BackwardContext backward = CurrentBackward();
  bool maps_sequence = false;
  uint64_t sequence_nr = 0;
  if (!backward.active) {
    locations_->CurrentFrames(&frames_);
    const uint64_t next = NextSequenceNr();
    if (next != last_sequence_nr_) {
      if (next > 0) {
        maps_sequence = true;
        sequence_nr = next - 1;
      }
      last_sequence_nr_ = next;
    }
  }
  const OpInfo& info = InfoFor(op);
  if (info.ignored) {
    ++stats_.ignored;
    return Outcome::kIgnored;
  }
  uint64_t backward_of = 0;
  if (backward.active) {
    if (backward.has_forward) {
      auto it = forward_of_seq_.find(backward.sequence_nr);
      if (it != forward_of_seq_.end()) backward_of = it->second;
    }
    if (backward_of == 0) {
      backward_of = backward.kind ^ (last_hash_ * graph::Fnv1aWriter::kPrime);
      if (backward_of == 0) backward_of = 1;
    }
    frames_.clear();
  }
  const uint32_t ordinal = ordinals_.Next(frames_, backward_of);

  args_.Clear();
  tensors_.clear();
  EncodeArguments(inputs, info.policy, args_, [&](const at::Tensor& t) { tensors_.push_back(t); });
  const uint64_t hash = IdentityHash(info.name_state, args_.bytes(), tensors_, frames_, backward_of, ordinal);
  last_hash_ = hash;
  if (maps_sequence) forward_of_seq_[sequence_nr] = hash;

  last_position_ = position_;
  for (const graph::Edge& e : graph_->Successors(position_)) {
    if (e.to != graph::kExit && graph_->node(e.to).hash == hash) {
      position_ = e.to;
      ++stats_.matched;
      return Outcome::kMatched;
    }
  }
  ++stats_.diverged;
  auto it = by_hash_.find(hash);
  position_ = it != by_hash_.end() ? it->second : graph::kEntry;
  return Outcome::kDiverged;
}

}  // namespace terra::runtime
