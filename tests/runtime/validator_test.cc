// The validation path recomputes, without building identities, exactly the
// structural hashes the recorder gave the nodes.
#include "runtime/validator.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include <functional>
#include <vector>

#include "runtime/interception.h"
#include "runtime/recorder.h"

namespace terra::runtime {
namespace {

class Lines final : public LocationSource {
 public:
  void CurrentFrames(std::vector<graph::Frame>* frames) override {
    frames->assign({graph::Frame{11, 1}, graph::Frame{22, line}});
  }
  std::string Describe(const std::vector<graph::Frame>&) override { return "here"; }
  uint32_t line = 0;
};

// One training-like iteration: forward, backward (with AccumulateGrad), a
// foreach update, a value read.
void Step(Lines& at, at::Tensor& w, bool other_path) {
  at.line = 1;
  at::Tensor y = w.mul(3.0);
  at.line = 2;
  at::Tensor loss = other_path ? y.exp().sum() : y.sum();
  at.line = 3;
  loss.backward();
  at.line = 4;
  {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> params{w};
    std::vector<at::Tensor> grads{w.grad()};
    at::_foreach_add_(params, grads, -0.1);
  }
  at.line = 5;
  (void)loss.item<double>();
  at.line = 6;
  w.mutable_grad().zero_();
}

TEST(ValidatorTest, MatchesEveryOpOfARecordedIteration) {
  Lines at;
  Recorder recorder(&at);
  at::Tensor w = torch::ones({4}, at::TensorOptions().requires_grad(true));
  for (int i = 0; i < 2; ++i) {
    {
      InterceptionGuard guard(&recorder);
      Step(at, w, false);
    }
    recorder.EndIteration();
  }
  const graph::TraceGraph g = recorder.Graph();
  ASSERT_GT(g.NodeCount(), 8u);
  // The recorder's locator, as co-execution takes it over: it has seen `w`
  // in an earlier iteration (a leaf new in the current one is named apart).
  Validator validator(&g, &recorder.locator());
  for (int i = 0; i < 3; ++i) {
    validator.StartIteration();
    InterceptionGuard guard(&validator);
    Step(at, w, false);
  }
  EXPECT_EQ(validator.stats().diverged, 0u);
  EXPECT_EQ(validator.stats().matched, 3 * recorder.Stats().ops_per_iteration.back());
}

// An input made with requires_grad in every iteration is a new leaf each
// time: its AccumulateGrad must get the same identity in every iteration, or
// the graph never stops changing.
TEST(ValidatorTest, ALeafNewInEveryIterationKeepsTheGraphStable) {
  Lines at;
  Recorder recorder(&at);
  at::Tensor w = torch::ones({4}, at::TensorOptions().requires_grad(true));
  std::vector<bool> changed;
  for (int i = 0; i < 4; ++i) {
    {
      InterceptionGuard guard(&recorder);
      at.line = 1;
      at::Tensor x = torch::ones({4}, at::TensorOptions().requires_grad(true));
      at.line = 2;
      x.mul(w).sum().backward();
    }
    changed.push_back(recorder.EndIteration());
  }
  EXPECT_FALSE(changed[2]) << "the third iteration changed the graph";
  EXPECT_FALSE(changed[3]) << "the fourth iteration changed the graph";
  const graph::TraceGraph g = recorder.Graph();
  Validator validator(&g, &recorder.locator());
  for (int i = 0; i < 2; ++i) {
    validator.StartIteration();
    InterceptionGuard guard(&validator);
    at.line = 1;
    at::Tensor x = torch::ones({4}, at::TensorOptions().requires_grad(true));
    at.line = 2;
    x.mul(w).sum().backward();
  }
  EXPECT_EQ(validator.stats().diverged, 0u);
}

TEST(ValidatorTest, AnOpOffThePathDiverges) {
  Lines at;
  Recorder recorder(&at);
  at::Tensor w = torch::ones({4}, at::TensorOptions().requires_grad(true));
  {
    InterceptionGuard guard(&recorder);
    Step(at, w, false);
  }
  recorder.EndIteration();
  const graph::TraceGraph g = recorder.Graph();
  Validator validator(&g, &at);
  validator.StartIteration();
  {
    InterceptionGuard guard(&validator);
    Step(at, w, true);  // exp() at line 2 was never traced
  }
  EXPECT_GE(validator.stats().diverged, 1u);
}

}  // namespace
}  // namespace terra::runtime

namespace terra::runtime {
namespace {

TEST(SequenceWindowTest, KeepsValuesByNumberAndForgetsOlderOnes) {
  SequenceWindow w;
  EXPECT_EQ(w.Get(5), 0u);
  w.Set(100, 1);
  w.Set(103, 4);  // a gap: 101 and 102 have none
  EXPECT_EQ(w.Get(100), 1u);
  EXPECT_EQ(w.Get(101), 0u);
  EXPECT_EQ(w.Get(103), 4u);
  EXPECT_EQ(w.Get(104), 0u);
  w.Set(98, 9);  // below the window, near it: the window grows at the front
  EXPECT_EQ(w.Get(98), 9u);
  EXPECT_EQ(w.Get(100), 1u);
  w.ForgetBefore(101);
  EXPECT_EQ(w.Get(98), 0u);
  EXPECT_EQ(w.Get(100), 0u);
  EXPECT_EQ(w.Get(103), 4u);
  EXPECT_EQ(w.size(), 3u);  // 101..103
}

TEST(SequenceWindowTest, AFarNumberRestartsTheWindowInsteadOfFillingTheGap) {
  SequenceWindow w;
  w.Set(10, 1);
  // Far past the window's end, not merely past its start: a long window stays.
  for (uint64_t s = 11; s < 10 + 2 * SequenceWindow::kMaxGap; ++s) w.Set(s, s);
  EXPECT_EQ(w.Get(10), 1u);
  w.Set(w.size() + 10 + SequenceWindow::kMaxGap, 7);
  EXPECT_EQ(w.size(), 1u);
  EXPECT_EQ(w.Get(10), 0u);
}

}  // namespace
}  // namespace terra::runtime
