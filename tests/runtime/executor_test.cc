// The executor alone: futures filled in program order, the access guard on
// unfilled futures, errors carried to Drain, synchronous mode.
#include "runtime/executor.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/base/check.h"

namespace terra::runtime {
namespace {

c10::OperatorHandle Op(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
}

// A Work computing op(inputs) into a new future; returns the future.
at::Tensor Submit(Executor& ex, const char* name, const char* overload, torch::jit::Stack inputs,
                  const graph::TensorMeta& meta) {
  at::Tensor future = MakeFuture(meta.sizes, meta.strides, at::kFloat, at::kCPU);
  ex.Submit(Work{Op(name, overload), std::move(inputs),
                 {FutureOutput{future.storage().getWeakStorageImpl(), &meta}}, "test.py:1"});
  return future;
}

TEST(ExecutorTest, FillsFuturesInProgramOrder) {
  Executor ex;
  const graph::TensorMeta meta{6, 0, -1, {3}, {1}};
  at::Tensor a = at::full({3}, 2.0);
  at::Tensor b = Submit(ex, "aten::mul", "Scalar", {a, c10::Scalar(3.0)}, meta);   // 6
  at::Tensor c = Submit(ex, "aten::add", "Tensor", {b, a, c10::Scalar(1)}, meta);  // 8
  ex.Submit(Work{Op("aten::mul_", "Scalar"), {c, c10::Scalar(0.5)}, {}, "test.py:3"});  // in place: 4
  ex.Drain();
  EXPECT_TRUE(b.equal(at::full({3}, 6.0)));
  EXPECT_TRUE(c.equal(at::full({3}, 4.0)));
  EXPECT_EQ(ex.submitted(), 3u);
}

TEST(ExecutorTest, AnUnfilledFutureRefusesToBeRead) {
  at::Tensor future = MakeFuture({2}, {1}, at::kFloat, at::kCPU);
  try {
    (void)future.data_ptr<float>();
    FAIL() << "read an unfilled future";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("still being computed"), std::string::npos) << e.what();
  }
  EXPECT_EQ(future.sizes(), (c10::IntArrayRef{2}));  // metadata is there
}

TEST(ExecutorTest, AFailureSurfacesAtDrainNamingTheOp) {
  Executor ex;
  const graph::TensorMeta meta{6, 0, -1, {2, 2}, {2, 1}};
  at::Tensor bad = at::ones({2, 3});
  at::Tensor out = Submit(ex, "aten::mm", "", {bad, bad}, meta);
  try {
    ex.Drain();
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("aten::mm"), std::string::npos) << msg;
    EXPECT_NE(msg.find("test.py:1"), std::string::npos) << msg;
  }
  ex.Drain();  // reported once
}

TEST(ExecutorTest, SynchronousModeFailsAtSubmit) {
  Executor ex(/*synchronous=*/true);
  const graph::TensorMeta meta{6, 0, -1, {2, 2}, {2, 1}};
  at::Tensor ok = Submit(ex, "aten::mul", "Scalar", {at::ones({2, 2}), c10::Scalar(2.0)}, meta);
  EXPECT_TRUE(ok.equal(at::full({2, 2}, 2.0)));  // already computed
  at::Tensor bad = at::ones({2, 3});
  EXPECT_THROW(Submit(ex, "aten::mm", "", {bad, bad}, meta), Error);
}

TEST(ExecutorTest, AnOutputTheProgramDroppedIsNotFilled) {
  Executor ex;
  const graph::TensorMeta meta{6, 0, -1, {2}, {1}};
  {
    at::Tensor dropped = Submit(ex, "aten::mul", "Scalar", {at::ones({2}), c10::Scalar(2.0)}, meta);
  }
  EXPECT_NO_THROW(ex.Drain());  // nothing to fill, no error
}

}  // namespace
}  // namespace terra::runtime
