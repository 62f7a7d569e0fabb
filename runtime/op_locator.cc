#include "runtime/op_locator.h"

namespace terra::runtime {
namespace {

thread_local std::vector<graph::Frame> tls_frames;
// Sets the numbers of leaves new in their iteration apart from the others'.
constexpr uint64_t kNewLeafTag = uint64_t{1} << 62;

}  // namespace

OpSite OpLocator::Observe() {
  OpSite site;
  site.backward = CurrentBackward();
  std::vector<graph::Frame>& frames = tls_frames;
  if (site.backward.active) {
    frames.clear();
  } else {
    source_->CurrentFrames(&frames);
    site.next_sequence_nr = NextSequenceNr();
  }
  site.frames = &frames;
  return site;
}

void OpLocator::Locate(OpSite& site) {
  if (site.backward.active) {
    uint64_t of = 0;
    if (site.backward.has_forward) {
      of = forward_of_seq_.Get(site.backward.sequence_nr);
    } else if (site.backward.accumulates_into != nullptr) {
      // Not by the op before it: whether that was a steal or a clone in the
      // previous AccumulateGrad must not change this one's identity.
      auto it = leaves_.find(site.backward.accumulates_into);
      if (it == leaves_.end() || it->second.keep.expired()) {
        auto* impl = const_cast<c10::TensorImpl*>(static_cast<const c10::TensorImpl*>(site.backward.accumulates_into));
        Leaf leaf{leaves_.size() + 1,
                  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(
                      c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>::reclaim_copy(impl)),
                  iteration_, ++new_leaves_};
        it = leaves_.insert_or_assign(site.backward.accumulates_into, std::move(leaf)).first;
      }
      // A leaf new in this iteration (an input made with requires_grad each
      // step) is named by its order among this iteration's new leaves: a
      // number for the locator's life would be new every iteration, and the
      // TraceGraph would never be stable.
      const Leaf& leaf = it->second;
      of = leaf.first_iteration == iteration_
               ? site.backward.kind ^ ((leaf.new_number ^ kNewLeafTag) * graph::HashWriter::kMultiplier)
               : site.backward.kind ^ (leaf.number * graph::HashWriter::kMultiplier);
    }
    if (of == 0) {
      of = site.backward.kind ^ (last_hash_ * graph::HashWriter::kMultiplier);
      if (of == 0) of = 1;
    }
    site.backward_of = of;
  } else if (site.next_sequence_nr != last_sequence_nr_ && site.next_sequence_nr > 0) {
    // Autograd created this op's backward function just before its kernel.
    site.maps_sequence = true;
    site.sequence_nr = site.next_sequence_nr - 1;
  }
  site.ordinal = ordinals_.Peek(*site.frames, site.backward_of);
}

void OpLocator::Commit(const OpSite& site, uint64_t hash) {
  ordinals_.Next(*site.frames, site.backward_of);
  if (!site.backward.active) last_sequence_nr_ = site.next_sequence_nr;
  if (site.maps_sequence) forward_of_seq_.Set(site.sequence_nr, hash);
  last_hash_ = hash;
}

void OpLocator::StartIteration() {
  ordinals_.Reset();
  last_hash_ = 0;
  ++iteration_;
  new_leaves_ = 0;
  // Backward functions created before the previous boundary no longer run
  // in this program's usual shape; forget them so the window stays small.
  forward_of_seq_.ForgetBefore(seq_at_previous_start_);
  seq_at_previous_start_ = NextSequenceNr();
}

}  // namespace terra::runtime
