// The validation path of co-execution (design.md §4, §6), measured alone.
//
// In co-execution every op the program issues is checked against the
// TraceGraph instead of being recorded: is it the op the graph expects next?
// The check must cost far less than the op itself (target: under half an
// eager tiny op), so it builds no NodeIdentity. It streams the op's canonical
// encoding (graph/node.h: operator, arguments, input metadata, location)
// through graph::HashWriter, which yields exactly the structural
// hash the recorder gave the node, and compares it with the hashes of the
// current node's successors. Per op: one thread-local read for the autograd
// context, the frame walk of the LocationSource, one cached lookup of the
// operator, the argument bytes into a reused buffer, and a few compares; no
// allocation once warm, no lock (one validator per thread).
//
// A match advances the position and commits the op's location (OpLocator).
// A mismatch is a divergence: nothing is committed, so a recorder sharing the
// locator can record the op itself; the position moves to the node with that
// hash if the graph has one, else to the iteration's start.
//
// Threading: one thread (the program's); ops the autograd engine runs on
// other threads are not validated. The graph must outlive the validator and
// not change while it runs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "graph/node.h"
#include "graph/trace_graph.h"
#include "runtime/interception.h"
#include "runtime/op_arguments.h"
#include "runtime/op_locator.h"
#include "runtime/tracing_types.h"

namespace terra::runtime {

struct ValidatorStats {
  uint64_t matched = 0;
  uint64_t diverged = 0;
  uint64_t ignored = 0;  // ops outside the program's computation (profiler markers)
};

class Validator final : public OpObserver {
 public:
  // With a locator of its own, or one shared with a recorder (`locator`, not
  // owned) so that recording can continue where validation stopped.
  Validator(const graph::TraceGraph* graph, LocationSource* locations);
  Validator(const graph::TraceGraph* graph, OpLocator* locator);

  void OnOp(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> inputs) override {
    (void)Check(op, inputs, /*commit_mismatch=*/true);
  }

  enum class Outcome { kMatched, kDiverged, kIgnored };
  // Validates one op: kMatched moves position() to its node. A mismatch is
  // committed to the locator only with `commit_mismatch` (a co-executor
  // leaves it to the recorder that takes over).
  Outcome Check(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> inputs,
                bool commit_mismatch = true);

  // The program starts a new iteration: expect the graph's first ops.
  void StartIteration();
  // Whether the iteration may end here (the current node leads to kExit).
  bool AtIterationEnd() const;

  graph::NodeIndex position() const { return position_; }
  // The fed argument values of the last op checked, hashed (0: none).
  uint64_t last_fed_hash() const { return args_.fed_hash(); }
  // Whether every tensor input of the last op checked is a plain strided
  // one (not sparse, nested or another layout): the only kind the executor
  // runs and futures stand for.
  bool last_inputs_strided() const { return strided_; }
  // Co-execution replayed a stretch of ops without checking them one by
  // one (a backward segment): stand where checking them would have left it.
  void JumpTo(graph::NodeIndex position) {
    last_position_ = position_;
    position_ = position;
  }
  // Where the validator stood before the last op (for messages).
  graph::NodeIndex last_position() const { return last_position_; }
  const ValidatorStats& stats() const { return stats_; }

 private:
  const IdentityTraits& TraitsOf(const c10::OperatorHandle& op);

  const graph::TraceGraph* graph_;
  std::unique_ptr<OpLocator> own_locator_;
  OpLocator* locator_;
  std::unordered_map<const c10::OperatorName*, IdentityTraits> ops_;
  std::unordered_map<uint64_t, graph::NodeIndex> by_hash_;
  graph::NodeIndex position_ = graph::kEntry;
  graph::NodeIndex last_position_ = graph::kEntry;
  // Reused buffers.
  // The op's tensor inputs, alive on the op's stack while Check runs; no
  // reference held (it would raise use counts autograd decides by).
  std::vector<const c10::TensorImpl*> tensors_;
  bool strided_ = true;
  graph::ArgsEncoder args_;
  ValidatorStats stats_;
};

}  // namespace terra::runtime
