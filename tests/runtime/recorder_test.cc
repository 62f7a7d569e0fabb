// The recorder under real dispatcher interception, driven from C++: which ops
// arrive, how values flow between nodes, where backward ops are located, and
// how iterations merge. Python frames come from a scripted LocationSource.
#include "runtime/recorder.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include <memory>
#include <string>
#include <vector>

#include "runtime/autograd_context.h"
#include "runtime/interception.h"

namespace terra::runtime {
namespace {

using graph::GraphNode;
using graph::TraceGraph;
using graph::ValueKind;
using graph::ValueRef;

// The "program location" is whatever the test says it is.
class ScriptedLocations final : public LocationSource {
 public:
  void CurrentFrames(std::vector<graph::Frame>* frames) override { *frames = frames_; }
  std::string Describe(const std::vector<graph::Frame>& frames) override {
    return frames.empty() ? "nowhere" : "line " + std::to_string(frames.back().offset);
  }
  void At(uint32_t line) { frames_ = {graph::Frame{0xC0DE, line}}; }

 private:
  std::vector<graph::Frame> frames_{graph::Frame{0xC0DE, 1}};
};

class RecorderTest : public ::testing::Test {
 protected:
  // Nodes of a graph that holds exactly one trace, in program order.
  static std::vector<const GraphNode*> InOrder(const TraceGraph& g) {
    std::vector<const GraphNode*> out;
    graph::NodeIndex at = graph::kEntry;
    for (size_t guard = 0; guard <= g.NodeCount(); ++guard) {
      const auto& succ = g.Successors(at);
      if (succ.size() != 1 || succ[0].to == graph::kExit) break;
      at = succ[0].to;
      out.push_back(&g.node(at));
    }
    return out;
  }

  static std::string Name(const GraphNode* n) { return graph::QualifiedName(n->identity); }

  ScriptedLocations locations_;
};

TEST_F(RecorderTest, RecordsOpsWithTheirValueFlow) {
  Recorder recorder(&locations_);
  at::Tensor a = at::rand({4});  // made before tracing: a program input
  {
    InterceptionGuard guard(&recorder);
    locations_.At(10);
    at::Tensor b = a + a;
    locations_.At(11);
    at::Tensor c = b.mul(2.0);
    locations_.At(12);
    c.add_(1.0);
    locations_.At(13);
    at::Tensor d = c.relu();
  }
  EXPECT_TRUE(recorder.EndIteration());
  const TraceGraph g = recorder.Graph();
  const std::vector<const GraphNode*> nodes = InOrder(g);
  ASSERT_EQ(nodes.size(), 4u);
  EXPECT_EQ(Name(nodes[0]), "aten::add.Tensor");
  EXPECT_EQ(Name(nodes[1]), "aten::mul.Scalar");
  EXPECT_EQ(Name(nodes[2]), "aten::add_.Scalar");
  EXPECT_EQ(Name(nodes[3]), "aten::relu");
  // a + a: both slots read program input 0 (the same tensor, one number).
  const ValueRef input0 = ValueRef::External(ValueKind::kProgramInput, 0);
  EXPECT_EQ(nodes[0]->input_sources, (std::vector<std::vector<ValueRef>>{{input0}, {input0}}));
  EXPECT_EQ(nodes[1]->input_sources[0], std::vector<ValueRef>{ValueRef::Output(0)});
  EXPECT_EQ(nodes[2]->input_sources[0], std::vector<ValueRef>{ValueRef::Output(1)});
  // After c.add_(1), c's value is the in-place op's output.
  EXPECT_EQ(nodes[3]->input_sources[0], std::vector<ValueRef>{ValueRef::Output(2)});
  // Identity: metadata and the location are recorded.
  EXPECT_EQ(nodes[0]->identity.inputs[0].sizes, (std::vector<int64_t>{4}));
  EXPECT_EQ(nodes[0]->identity.inputs[0].dtype, static_cast<uint8_t>(at::kFloat));
  EXPECT_EQ(nodes[1]->identity.location.frames.back().offset, 11u);
  EXPECT_FALSE(nodes[1]->identity.args.empty());  // the scalar 2.0
}

TEST_F(RecorderTest, EqualIterationsMergeAndABranchShows) {
  Recorder recorder(&locations_);
  at::Tensor x = at::ones({3});
  auto iteration = [&](bool other_path) {
    InterceptionGuard guard(&recorder);
    locations_.At(20);
    at::Tensor y = x * 3.0;
    if (other_path) {
      locations_.At(22);
      y = y.neg();
    } else {
      locations_.At(24);
      y = y.exp();
    }
    locations_.At(26);
    y = y.sum();
  };
  iteration(false);
  EXPECT_TRUE(recorder.EndIteration());
  iteration(false);
  EXPECT_FALSE(recorder.EndIteration());
  EXPECT_TRUE(recorder.IsStable(1));
  iteration(true);
  EXPECT_TRUE(recorder.EndIteration());
  const TraceGraph g = recorder.Graph();
  EXPECT_EQ(g.NodeCount(), 4u);  // mul, exp, neg, sum (the sum is a join)
  ASSERT_EQ(g.BranchPoints().size(), 1u);
  EXPECT_EQ(graph::QualifiedName(g.node(g.BranchPoints()[0]).identity), "aten::mul.Scalar");
  EXPECT_EQ(recorder.Stats().ops_per_iteration, (std::vector<uint32_t>{3, 3, 3}));
}

TEST_F(RecorderTest, ConsecutiveOpsFromOneLocationGetOrdinals) {
  Recorder recorder(&locations_);
  at::Tensor x = at::ones({2});
  {
    InterceptionGuard guard(&recorder);
    locations_.At(30);
    at::Tensor y = x.exp();
    at::Tensor z = x.exp();  // the same op from the same place: the next ordinal
  }
  recorder.EndIteration();
  const TraceGraph g = recorder.Graph();
  const std::vector<const GraphNode*> nodes = InOrder(g);
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[0]->identity.location.ordinal, 0u);
  EXPECT_EQ(nodes[1]->identity.location.ordinal, 1u);
}

TEST_F(RecorderTest, BackwardOpsAreLocatedByTheirForwardNode) {
  Recorder recorder(&locations_);
  at::Tensor w = torch::ones({3}, at::TensorOptions().requires_grad(true));
  {
    InterceptionGuard guard(&recorder);
    locations_.At(40);
    at::Tensor y = w.mul(2.0);
    locations_.At(41);
    at::Tensor loss = y.sum();
    locations_.At(42);
    loss.backward();
  }
  recorder.EndIteration();
  const TraceGraph g = recorder.Graph();
  uint64_t mul_hash = 0;
  uint64_t sum_hash = 0;
  for (const GraphNode& n : g.nodes()) {
    if (n.identity.op == "aten::mul" && !n.identity.location.IsBackward()) mul_hash = n.hash;
    if (n.identity.op == "aten::sum" && !n.identity.location.IsBackward()) sum_hash = n.hash;
  }
  ASSERT_NE(mul_hash, 0u);
  ASSERT_NE(sum_hash, 0u);
  size_t of_mul = 0;
  size_t of_sum = 0;
  for (const GraphNode& n : g.nodes()) {
    if (!n.identity.location.IsBackward()) continue;
    EXPECT_TRUE(n.identity.location.frames.empty());
    if (n.identity.location.backward_of == mul_hash) ++of_mul;
    if (n.identity.location.backward_of == sum_hash) ++of_sum;
  }
  EXPECT_GE(of_sum, 1u);  // SumBackward: expand
  EXPECT_GE(of_mul, 1u);  // MulBackward: mul
  ASSERT_TRUE(w.grad().defined());
  EXPECT_TRUE(w.grad().equal(at::full({3}, 2.0)));  // tracing changed nothing
}

TEST_F(RecorderTest, ValueReadsAreSyncPoints) {
  Recorder recorder(&locations_);
  at::Tensor x = at::ones({2});
  double value = 0;
  {
    InterceptionGuard guard(&recorder);
    locations_.At(50);
    at::Tensor s = x.sum();
    locations_.At(51);
    value = s.item<double>();
    locations_.At(52);
    recorder.OnSync(x, "numpy");
  }
  EXPECT_EQ(value, 2.0);
  recorder.EndIteration();
  const std::vector<SyncSummary> syncs = recorder.Syncs();
  ASSERT_EQ(syncs.size(), 2u);
  EXPECT_EQ(syncs[0].op, "aten::_local_scalar_dense");
  EXPECT_EQ(syncs[0].location.frames.back().offset, 51u);
  EXPECT_EQ(syncs[1].op, "numpy");
  EXPECT_EQ(recorder.Stats().syncs, 2u);
  const TraceGraph g = recorder.Graph();
  size_t marked = 0;
  for (const GraphNode& n : g.nodes()) marked += n.sync_after ? 1 : 0;
  EXPECT_EQ(marked, 1u);  // both reads come after _local_scalar_dense
}

TEST_F(RecorderTest, OpsThatReturnNothingOutputTheirMutatedArguments) {
  Recorder recorder(&locations_);
  std::vector<at::Tensor> params = {at::ones({2}), at::ones({3})};
  {
    InterceptionGuard guard(&recorder);
    locations_.At(60);
    at::_foreach_add_(params, 1.0);
    locations_.At(61);
    at::Tensor s = params[1].sum();
  }
  recorder.EndIteration();
  const TraceGraph g = recorder.Graph();
  const std::vector<const GraphNode*> nodes = InOrder(g);
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(Name(nodes[0]), "aten::_foreach_add_.Scalar");
  EXPECT_EQ(nodes[0]->num_outputs, 2u);
  EXPECT_EQ(nodes[1]->input_sources[0], std::vector<ValueRef>{ValueRef::Output(0, 1)});
  EXPECT_TRUE(params[0].equal(at::full({2}, 2.0)));
}

TEST_F(RecorderTest, AFailingOpIsNotRecordedAndRecordingGoesOn) {
  Recorder recorder(&locations_);
  at::Tensor a = at::ones({2, 3});
  {
    InterceptionGuard guard(&recorder);
    locations_.At(70);
    EXPECT_THROW(at::mm(a, a), c10::Error);
    locations_.At(71);
    at::Tensor ok = a.exp();
  }
  recorder.EndIteration();
  const TraceGraph g = recorder.Graph();
  const std::vector<const GraphNode*> nodes = InOrder(g);
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(Name(nodes[0]), "aten::exp");
}

TEST_F(RecorderTest, PrologueIsDroppedAndAnOverlongIterationOverflows) {
  Recorder recorder(&locations_, /*max_ops_per_iteration=*/3);
  at::Tensor x = at::ones({2});
  auto ops = [&](int n) {
    InterceptionGuard guard(&recorder);
    for (int i = 0; i < n; ++i) {
      locations_.At(80 + i);
      x = x + 1.0;
    }
  };
  ops(2);
  EXPECT_FALSE(recorder.EndIteration(/*merge=*/false));
  EXPECT_EQ(recorder.Stats().prologue_ops, 2u);
  EXPECT_EQ(recorder.Graph().NodeCount(), 0u);
  ops(5);
  EXPECT_FALSE(recorder.EndIteration());
  EXPECT_EQ(recorder.Stats().overflows, 1u);
  EXPECT_EQ(recorder.Graph().NodeCount(), 0u);
  ops(2);
  EXPECT_TRUE(recorder.EndIteration());
  EXPECT_EQ(recorder.Graph().NodeCount(), 2u);
  EXPECT_TRUE(x.equal(at::full({2}, 10.0)));  // every op ran
}

TEST_F(RecorderTest, ShapesThatChangeLaterAreCountedAgainstTheBound) {
  Recorder recorder(&locations_);
  for (int64_t n = 1; n <= static_cast<int64_t>(kMaxShapeVariants) + 2; ++n) {
    at::Tensor x = at::ones({n});
    {
      InterceptionGuard guard(&recorder);
      locations_.At(90);
      at::Tensor y = x.exp();
    }
    recorder.EndIteration();
  }
  const RecorderStats st = recorder.Stats();
  EXPECT_EQ(st.max_new_variants, kMaxShapeVariants + 1);
  EXPECT_EQ(st.locations_over_bound, 1u);
}

}  // namespace
}  // namespace terra::runtime

namespace terra::runtime {
namespace {

TEST(RecorderFedTest, ViewsWithMovingBoundsStayOneNodeAndShapeChangesAreMarked) {
  class One final : public LocationSource {
   public:
    void CurrentFrames(std::vector<graph::Frame>* f) override { *f = {graph::Frame{1, line}}; }
    std::string Describe(const std::vector<graph::Frame>&) override { return ""; }
    uint32_t line = 0;
  } at;
  Recorder recorder(&at);
  at::Tensor data = at::arange(32, at::kFloat);
  for (int64_t i = 0; i < 4; ++i) {
    {
      InterceptionGuard guard(&recorder);
      at.line = 1;
      at::Tensor window = data.slice(0, 4 * i, 4 * i + 8);  // moves, same length
      at.line = 2;
      at::Tensor head = data.narrow(0, 0, 2 + i);  // grows
      at.line = 3;
      at::Tensor s = window.sum() * (1.0 + i);  // a new Python float each time
    }
    recorder.EndIteration();
  }
  const graph::TraceGraph g = recorder.Graph();
  EXPECT_EQ(g.StableFor(), 2u);  // the first merge, the narrow's mark, then nothing new
  // narrow() is composite: it arrives as a slice, from line 2.
  size_t moving = 0;
  size_t growing = 0;
  for (const graph::GraphNode& n : g.nodes()) {
    if (n.identity.op != "aten::slice") continue;
    if (n.identity.location.frames.back().offset == 1) {
      ++moving;
      EXPECT_FALSE(n.outputs_vary);
    } else {
      ++growing;
      EXPECT_TRUE(n.outputs_vary);
    }
  }
  EXPECT_EQ(moving, 1u);
  EXPECT_EQ(growing, 1u);
}

TEST(AutogradContextTest, AReplayNamesALeafsAccumulateGradAsTheEngineDoes) {
  // A replayed backward runs a leaf's gradient hooks itself: inside the
  // scope, CurrentBackward() names the leaf's AccumulateGrad as it does while
  // the engine evaluates it, so the hooks' ops are located alike.
  at::Tensor w = torch::ones({2}, at::TensorOptions().requires_grad(true));
  at::Tensor loss = (w * 3).sum();
  const AutogradGraphWalk walk = WalkAutogradGraph(loss);
  ASSERT_TRUE(walk.eligible) << walk.why;
  ASSERT_EQ(walk.leaves.size(), 1u);
  ASSERT_EQ(walk.leaf_functions.size(), 1u);
  EXPECT_FALSE(CurrentBackward().active);
  {
    ScopedBackwardFunction evaluating(walk.leaf_functions[0]);
    const BackwardContext ctx = CurrentBackward();
    EXPECT_TRUE(ctx.active);
    EXPECT_FALSE(ctx.has_forward);
    EXPECT_EQ(ctx.accumulates_into, w.unsafeGetTensorImpl());
  }
  EXPECT_FALSE(CurrentBackward().active);
}

// A post-accumulate-grad hook that counts its calls.
struct CountingHook : torch::autograd::PostAccumulateGradHook {
  int* calls;
  explicit CountingHook(int* c) : calls(c) {}
  void operator()(const torch::autograd::Variable&) override { ++*calls; }
};

TEST(AutogradContextTest, OnlyDeferrableHooksLeaveABackwardReplayable) {
  // A leaf's post-accumulate-grad hook keeps the backward op by op unless the
  // deferrable-hook check (the Python bindings' in Terra) accepts it; a
  // replay then runs the hook itself, as AccumulateGrad does.
  at::Tensor w = torch::ones({2}, at::TensorOptions().requires_grad(true));
  at::Tensor loss = (w * 3).sum();
  const AutogradGraphWalk plain = WalkAutogradGraph(loss);
  ASSERT_TRUE(plain.eligible) << plain.why;
  int calls = 0;
  torch::autograd::impl::set_post_acc_grad_hooks(w, std::make_unique<CountingHook>(&calls));
  AutogradGraphWalk walk = WalkAutogradGraph(loss);
  EXPECT_FALSE(walk.eligible);
  EXPECT_STREQ(walk.why, "a hook");
  SetDeferrableHookCheck([](const at::Tensor&) { return true; });
  walk = WalkAutogradGraph(loss);
  SetDeferrableHookCheck(nullptr);
  ASSERT_TRUE(walk.eligible) << walk.why;
  EXPECT_NE(walk.signature, plain.signature);  // a segment learned without the hook is not this one
  RunPostAccumulateGradHooks(walk.leaves[0]);
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace terra::runtime
