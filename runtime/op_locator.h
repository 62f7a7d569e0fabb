// Where an op comes from (graph::Location), by one set of rules for the
// recorder and the validator, so that both give the same op the same
// identity, and recording can take over from co-execution in the middle of an
// iteration (a fallback) without a seam.
//
// The rules (docs/tracing.md): a forward op is located by the Python frames
// of its thread; a backward op by the forward node that created its backward
// function (autograd's per-thread sequence numbers, mapped to node hashes as
// forward ops are identified); AccumulateGrad by the leaf it accumulates into
// (numbered in first-seen order, for the locator's life; a leaf first seen in
// the current iteration, such as an input made with requires_grad each step,
// by its first-seen order among this iteration's new leaves, so that every
// iteration gives it the same identity); any other backward
// function with no forward op by its type and the op identified before it.
// Consecutive ops from one location get increasing ordinals; ordinals restart
// with each iteration.
//
// Protocol per op: Observe (outside any lock: it reads the frames, which may
// take the GIL), then Locate (the location, nothing changed yet), then, once
// the op is accepted as a node, Commit with its identity hash. An op that is
// not committed (a validator's mismatch, an ignored op) leaves no trace, so
// another observer can locate it again.
// Threading: Observe on the op's thread; Locate, Commit and StartIteration
// under the owner's lock (the recorder's mutex, or the one co-executing
// thread). The frame scratch is per thread.
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_map>

#include <c10/core/TensorImpl.h>
#include <vector>

#include "graph/node.h"
#include "runtime/autograd_context.h"
#include "runtime/op_arguments.h"
#include "runtime/tracing_types.h"

namespace terra::runtime {

struct OpSite {
  BackwardContext backward;
  const std::vector<graph::Frame>* frames = nullptr;  // the thread's scratch; empty for backward ops
  uint64_t next_sequence_nr = 0;
  bool maps_sequence = false;  // this op created the backward function sequence_nr
  uint64_t sequence_nr = 0;
  // Filled by Locate:
  uint64_t backward_of = 0;
  uint32_t ordinal = 0;
};

// Values by autograd sequence number (0: none), kept in a window over
// consecutive numbers instead of a hash map, so that setting one costs no
// allocation once warm. Numbers further than kMaxGap from the window (another
// thread's counter, or a stretch of ops Terra never saw) restart it there
// rather than fill the gap: bounded memory, at the price of forgetting.
class SequenceWindow {
 public:
  static constexpr uint64_t kMaxGap = uint64_t{1} << 16;

  uint64_t Get(uint64_t seq) const {
    return seq >= base_ && seq - base_ < values_.size() ? values_[seq - base_] : 0;
  }
  void Set(uint64_t seq, uint64_t value) {
    if (values_.empty() || seq + kMaxGap < base_ || seq >= base_ + values_.size() + kMaxGap) {
      values_.clear();
      base_ = seq;
    } else if (seq < base_) {
      values_.insert(values_.begin(), base_ - seq, 0);
      base_ = seq;
    }
    if (seq - base_ >= values_.size()) values_.resize(seq - base_ + 1, 0);
    values_[seq - base_] = value;
  }
  // Forgets the values of numbers below `seq`.
  void ForgetBefore(uint64_t seq) {
    while (!values_.empty() && base_ < seq) {
      values_.pop_front();
      ++base_;
    }
  }
  size_t size() const { return values_.size(); }

 private:
  std::deque<uint64_t> values_;
  uint64_t base_ = 0;
};

class OpLocator {
 public:
  explicit OpLocator(LocationSource* source) : source_(source) {}

  LocationSource& source() { return *source_; }

  OpSite Observe();
  void Locate(OpSite& site);
  void Commit(const OpSite& site, uint64_t hash);
  // A new iteration: ordinals restart; sequence numbers older than the
  // previous iteration are forgotten.
  void StartIteration();

  uint64_t last_hash() const { return last_hash_; }

  // What locating the next op depends on, besides the sequence numbers and
  // leaves (which backward ops do not change): saved where co-execution
  // learned a backward segment ends (and where each of its gradient hooks
  // starts), restored when it replays the segment without locating its ops
  // one by one.
  struct State {
    OrdinalTracker ordinals;
    uint64_t last_hash = 0;
    uint64_t new_leaves = 0;
  };
  State Save() const { return {ordinals_, last_hash_, new_leaves_}; }
  void Restore(const State& state) {
    ordinals_ = state.ordinals;
    last_hash_ = state.last_hash;
    new_leaves_ = state.new_leaves;
  }

 private:
  LocationSource* source_;
  // Forward node hashes by autograd sequence number.
  SequenceWindow forward_of_seq_;
  // Leaves AccumulateGrad writes, numbered in first-seen order; the weak
  // references keep an address from naming another tensor later.
  struct Leaf {
    uint64_t number;
    c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> keep;
    uint64_t first_iteration = 0;  // the iteration it was first seen in
    uint64_t new_number = 0;       // its number among that iteration's new leaves
  };
  std::unordered_map<const void*, Leaf> leaves_;
  uint64_t iteration_ = 0;   // StartIteration calls
  uint64_t new_leaves_ = 0;  // leaves first seen in this iteration so far
  uint64_t last_hash_ = 0;
  uint64_t last_sequence_nr_ = 0;
  uint64_t seq_at_previous_start_ = 0;
  OrdinalTracker ordinals_;
};

}  // namespace terra::runtime
