// The executor alone: futures filled in program order, the access guard on
// unfilled futures, errors carried to Drain, synchronous mode.
#include "runtime/executor.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>

#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "runtime/backward_segment.h"
#include "runtime/base/check.h"
#include "runtime/tensor_layout.h"

namespace terra::runtime {
namespace {

// terra_test::gate(x): x + 1, once the test opens the gate. It holds the
// executor at a known point, so that what runs before and after it is fixed.
std::atomic<bool> gate_open{false};

at::Tensor Gate(const at::Tensor& x) {
  while (!gate_open.load()) std::this_thread::sleep_for(std::chrono::microseconds(100));
  return x + 1;
}

TORCH_LIBRARY(terra_test, m) { m.def("gate(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(terra_test, CPU, m) { m.impl("gate", &Gate); }

c10::OperatorHandle Op(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
}

// A Work computing op(inputs) into a new future; returns the future.
Work MakeWork(c10::OperatorHandle op, torch::jit::Stack inputs, std::vector<FutureOutput> futures,
              const char* where) {
  Work work;
  work.op = op;
  work.inputs = std::move(inputs);
  work.futures = std::move(futures);
  work.where = where;
  return work;
}

at::Tensor Submit(Executor& ex, const char* name, const char* overload, torch::jit::Stack inputs,
                  const graph::TensorMeta& meta) {
  FutureOutput out;
  at::Tensor future = ex.NewFuture(meta, &out);
  ex.Submit(MakeWork(Op(name, overload), std::move(inputs), {out}, "test.py:1"));
  return future;
}

TEST(ExecutorTest, FillsFuturesInProgramOrder) {
  Executor ex;
  const graph::TensorMeta meta{6, 0, -1, {3}, {1}};
  at::Tensor a = at::full({3}, 2.0);
  at::Tensor b = Submit(ex, "aten::mul", "Scalar", {a, c10::Scalar(3.0)}, meta);   // 6
  at::Tensor c = Submit(ex, "aten::add", "Tensor", {b, a, c10::Scalar(1)}, meta);  // 8
  ex.Submit(MakeWork(Op("aten::mul_", "Scalar"), {c, c10::Scalar(0.5)}, {}, "test.py:3"));  // in place: 4
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

// The CPU allocator, recording which thread frees each allocation.
class FreeingThreadAllocator final : public c10::Allocator {
 public:
  explicit FreeingThreadAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base_->allocate(n);
    void* data = inner.get();
    const c10::Device device = inner.device();
    return c10::DataPtr(data, new Inner{std::move(inner)}, &Free, device);
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
  static std::atomic<int> freed_on_main;
  static std::atomic<int> freed_elsewhere;
  static std::thread::id main;

 private:
  struct Inner {
    c10::DataPtr data;
  };
  static void Free(void* context) {
    (std::this_thread::get_id() == main ? freed_on_main : freed_elsewhere).fetch_add(1);
    delete static_cast<Inner*>(context);
  }
  c10::Allocator* base_;
};
std::atomic<int> FreeingThreadAllocator::freed_on_main{0};
std::atomic<int> FreeingThreadAllocator::freed_elsewhere{0};
std::thread::id FreeingThreadAllocator::main;

// glibc frees fastest, and without another thread's arena lock, on the
// thread that allocated: a result's memory the program lets go of goes back
// to the executor thread that made it, which frees it before its next op or
// nap; without an executor thread it is freed at once.
TEST(ExecutorTest, AResultsMemoryIsFreedByTheExecutorThread) {
  c10::Allocator* base = c10::GetCPUAllocator();
  FreeingThreadAllocator recording(base);
  FreeingThreadAllocator::main = std::this_thread::get_id();
  c10::SetCPUAllocator(&recording, /*priority=*/100);
  const graph::TensorMeta meta{6, 0, -1, {64}, {1}};
  const at::Tensor ones = at::ones({64});  // allocated before: not counted
  {
    Executor ex;
    std::vector<at::Tensor> results;
    for (int i = 0; i < 8; ++i) results.push_back(Submit(ex, "aten::mul", "Scalar", {ones, c10::Scalar(2.0)}, meta));
    ex.Drain();
    EXPECT_TRUE(results.back().equal(at::full({64}, 2.0)));
    FreeingThreadAllocator::freed_on_main = 0;
    FreeingThreadAllocator::freed_elsewhere = 0;
    results.clear();  // the program lets go of all eight
    Submit(ex, "aten::mul", "Scalar", {ones, c10::Scalar(3.0)}, meta);  // the executor's next op
    ex.Drain();
    EXPECT_EQ(FreeingThreadAllocator::freed_on_main.load(), 0);
    EXPECT_GE(FreeingThreadAllocator::freed_elsewhere.load(), 8);
  }
  {
    Executor ex(/*synchronous=*/true);  // no executor thread
    at::Tensor r = Submit(ex, "aten::mul", "Scalar", {ones, c10::Scalar(2.0)}, meta);
    FreeingThreadAllocator::freed_on_main = 0;
    r.reset();
    EXPECT_EQ(FreeingThreadAllocator::freed_on_main.load(), 1);
  }
  c10::SetCPUAllocator(base, /*priority=*/100);
}

// A Python number the op took as a tensor is held as its value and rebuilt
// on the executor thread, still a wrapped number (which does not promote a
// float32 tensor to float64).
TEST(ExecutorTest, APythonNumberReachesTheKernelAsAWrappedNumber) {
  Executor ex;
  const graph::TensorMeta meta{6, 0, -1, {3}, {1}};  // float32
  const at::Tensor a = at::full({3}, 3.0f);
  at::Tensor number = at::scalar_tensor(0.1, at::kDouble);
  number.unsafeGetTensorImpl()->set_wrapped_number(true);
  const at::Tensor expected = at::mul(a, number);
  ASSERT_EQ(expected.scalar_type(), at::kFloat);
  at::Tensor f = Submit(ex, "aten::mul", "Tensor", {a, number}, meta);
  EXPECT_EQ(number.use_count(), 1u);  // the queued Work holds its value, not the tensor
  ex.Drain();
  EXPECT_TRUE(f.equal(expected));
}

// Autograd reads use_count() of gradients and of their storages to choose
// between ops; a queued Work must not change those counts.
TEST(ExecutorTest, QueuedWorkHoldsNoReferenceToTheProgramsFutures) {
  Executor ex;
  const graph::TensorMeta meta{6, 0, -1, {3}, {1}};
  at::Tensor a = at::full({3}, 2.0);
  at::Tensor b = Submit(ex, "aten::mul", "Scalar", {a, c10::Scalar(3.0)}, meta);  // 6
  at::Tensor c = Submit(ex, "aten::add", "Tensor", {b, b, c10::Scalar(1)}, meta);  // 12
  ex.Submit(MakeWork(Op("aten::mul_", "Scalar"), {b, c10::Scalar(0.5)}, {}, "test.py:3"));  // b: 3
  EXPECT_EQ(b.use_count(), 1u);
  EXPECT_EQ(b.storage().use_count(), 1u);
  EXPECT_EQ(c.use_count(), 1u);
  ex.Drain();
  EXPECT_TRUE(b.equal(at::full({3}, 3.0)));
  EXPECT_TRUE(c.equal(at::full({3}, 12.0)));
}

TEST(ExecutorTest, AFutureTheProgramDroppedStillFeedsItsConsumers) {
  Executor ex;
  const graph::TensorMeta meta{6, 0, -1, {3}, {1}};
  at::Tensor a = at::full({3}, 2.0);
  at::Tensor b = Submit(ex, "aten::mul", "Scalar", {a, c10::Scalar(3.0)}, meta);  // 6
  at::Tensor c = Submit(ex, "aten::add", "Tensor", {b, a, c10::Scalar(1)}, meta);  // 8
  b.reset();
  ex.Drain();
  EXPECT_TRUE(c.equal(at::full({3}, 8.0)));
}

TEST(ExecutorTest, ViewsAndListsOfFuturesReachTheExecutor) {
  Executor ex;
  const graph::TensorMeta four{6, 0, -1, {4}, {1}};
  const graph::TensorMeta two{6, 0, -1, {2}, {1}};
  const graph::TensorMeta six{6, 0, -1, {6}, {1}};
  at::Tensor b = Submit(ex, "aten::arange", "", {c10::Scalar(4.0), c10::IValue(at::kFloat),
                                                 c10::IValue(), c10::IValue(), c10::IValue()},
                        four);                          // 0 1 2 3
  at::Tensor middle = b.narrow(0, 1, 2);                // a view: 1 2 (metadata only)
  at::Tensor d = Submit(ex, "aten::mul", "Scalar", {middle, c10::Scalar(10.0)}, two);  // 10 20
  at::Tensor e = Submit(ex, "aten::cat", "", {c10::List<at::Tensor>({d, b}), int64_t{0}}, six);
  ex.Drain();
  EXPECT_TRUE(d.equal(at::tensor({10.0f, 20.0f})));
  EXPECT_TRUE(e.equal(at::tensor({10.0f, 20.0f, 0.0f, 1.0f, 2.0f, 3.0f})));
  EXPECT_TRUE(middle.equal(at::tensor({1.0f, 2.0f})));  // the view sees the filled memory
}

TEST(ExecutorTest, AReadWaitsOnlyForTheWorkThatWritesTheValue) {
  gate_open.store(false);
  Executor ex;
  const graph::TensorMeta meta{6, 0, -1, {3}, {1}};
  at::Tensor a = at::full({3}, 2.0);
  at::Tensor p = at::full({3}, 1.0);  // ordinary memory, written in place below
  at::Tensor b = Submit(ex, "aten::mul", "Scalar", {a, c10::Scalar(3.0)}, meta);  // 6
  at::Tensor g = Submit(ex, "terra_test::gate", "", {a}, meta);                    // 3, held
  at::Tensor c = Submit(ex, "aten::add", "Tensor", {g, b, c10::Scalar(1)}, meta);  // 9

  // b's producer ran before the gate: the read returns with the gate shut.
  ex.AwaitValue(b);
  EXPECT_TRUE(b.equal(at::full({3}, 6.0)));
  EXPECT_THROW((void)c.data_ptr<float>(), c10::Error);  // still queued behind the gate
  EXPECT_FALSE(ex.MayBeQueued(p));

  // In-place writes queued behind the gate: a read of b, or of p, waits for them.
  ex.Submit(MakeWork(Op("aten::mul_", "Scalar"), {b, c10::Scalar(0.5)}, {}, "test.py:4"));
  ex.Submit(MakeWork(Op("aten::add_", "Tensor"), {p, a, c10::Scalar(1)}, {}, "test.py:5"));
  EXPECT_TRUE(ex.MayBeQueued(p));
  std::thread opener([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    gate_open.store(true);
  });
  ex.AwaitValue(b);
  EXPECT_TRUE(b.equal(at::full({3}, 3.0)));  // 6 * 0.5, not the 6 before the gate
  ex.AwaitValue(p);
  EXPECT_TRUE(p.equal(at::full({3}, 3.0)));  // 1 + 2
  EXPECT_FALSE(ex.MayBeQueued(p));
  opener.join();
  ex.Drain();
  EXPECT_TRUE(c.equal(at::full({3}, 9.0)));  // 3 + 6: b as it was when c was issued
}

TEST(ExecutorTest, ExposedMemoryIsReadAsItWasWhenTheWorkWasQueued) {
  // The program holds a numpy array over `x` (ExposeMemory) and writes
  // through it while a Work that reads `x` is still queued behind the gate.
  gate_open.store(false);
  Executor ex;
  const graph::TensorMeta meta{6, 0, -1, {3}, {1}};
  at::Tensor x = at::full({3}, 2.0);
  EXPECT_FALSE(DirectMemory(x));
  const uintptr_t key = ExposeMemory(x);
  EXPECT_TRUE(DirectMemory(x));
  EXPECT_TRUE(DirectMemory(x.slice(0, 1)));  // a view: the same storage
  at::Tensor g = Submit(ex, "terra_test::gate", "", {at::full({3}, 0.0)}, meta);
  at::Tensor y = Submit(ex, "aten::add", "Tensor", {g, x, c10::Scalar(1)}, meta);
  EXPECT_EQ(ex.fed_by_value(), 1u);
  EXPECT_FALSE(ex.MayBeQueued(x));
  std::fill_n(x.data_ptr<float>(), 3, 100.0f);  // behind ATen's back
  gate_open.store(true);
  ex.Drain();
  EXPECT_TRUE(y.equal(at::full({3}, 3.0)));  // 1 + 2: x as it was when queued
  EndExposure(key);
  EXPECT_FALSE(DirectMemory(x));

  // A future's memory counts once it is real (numpy drains before handing it out).
  at::Tensor f = MakeFuture({2}, {1}, at::kFloat, at::kCPU);
  const uintptr_t future_key = ExposeMemory(f);
  EXPECT_FALSE(DirectMemory(f));
  EndExposure(future_key);
}

TEST(TensorLayoutTest, ARebuiltPythonNumberStaysAWrappedNumber) {
  // `loss * 0.5` saves 0.5 as a wrapped-number tensor; a replayed backward
  // rebuilds it on its storage. Type promotion treats a wrapped number as a
  // scalar, so a 0-dim float32 gradient times it stays float32.
  at::Tensor half = at::scalar_to_tensor(0.5);
  half.unsafeGetTensorImpl()->set_wrapped_number(true);
  const TensorLayout layout = TensorLayout::Of(half);
  at::Tensor rebuilt = layout.On(half.storage());
  EXPECT_TRUE(rebuilt.unsafeGetTensorImpl()->is_wrapped_number());
  EXPECT_EQ(at::mul(at::ones({}, at::kFloat), rebuilt).scalar_type(), at::kFloat);
  EXPECT_FALSE(TensorLayout::Of(at::ones({})).On(half.storage()).unsafeGetTensorImpl()->is_wrapped_number());
}

TEST(ExecutorTest, AResultOfAnotherDtypeThanItsFutureFailsAtDrain) {
  // Readers of the future were told float32; float64 bits would be read as
  // float32 ones. The executor refuses instead of filling the future.
  Executor ex;
  const graph::TensorMeta meta{6, 0, -1, {}, {}};
  at::Tensor f = Submit(ex, "aten::mul", "Tensor", {at::ones({}, at::kFloat), at::ones({}, at::kDouble)}, meta);
  try {
    ex.Drain();
    FAIL() << "a float64 result filled a float32 future";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("a result of dtype Double for a future of dtype Float"), std::string::npos)
        << e.what();
  }
}

TEST(ExecutorTest, ASegmentRunsInPiecesWithTheProgramsWorkBetweenThem) {
  // A replayed backward runs in pieces where gradient hooks run between them:
  // the pieces share the segment's values, and a Work the program issued
  // between two pieces runs between them (here it halves the first piece's
  // result in place before the second piece reads it).
  Executor ex;
  const graph::TensorMeta meta{6, 0, -1, {3}, {1}};
  const size_t nbytes = 3 * sizeof(float);
  auto segment = std::make_shared<BackwardSegment>();
  segment->values = {SegmentValue{meta, nbytes, 1, true, 0}, SegmentValue{meta, nbytes, 1, true, 1}};
  segment->external_written = {0};
  const TensorLayout layout = TensorLayout::Of(at::zeros({3}));
  auto argument = [&](uint32_t arg, bool external, uint32_t value) {
    SegmentArgument a;
    a.arg = arg;
    a.external = external;
    a.value = value;
    a.layout = layout;
    return a;
  };
  SegmentOp times3{Op("aten::mul", "Scalar"), nullptr, {at::Tensor(), c10::Scalar(3.0)}, {argument(0, true, 0)}, {0}, {}};
  SegmentOp plus_a{Op("aten::add", "Tensor"), nullptr, {at::Tensor(), at::Tensor(), c10::Scalar(1)},
                   {argument(0, false, 0), argument(1, true, 0)}, {1}, {}};
  segment->ops = {times3, plus_a};
  auto run = std::make_shared<SegmentRun>();
  const at::Tensor a = at::full({3}, 2.0);
  run->externals.push_back(SegmentExternal{{}, a.storage(), 0});

  auto piece = [&](uint32_t begin, uint32_t end, uint32_t value) {
    Work work;
    work.segment = segment;
    work.run = run;
    work.segment_begin = begin;
    work.segment_end = end;
    work.where = "loss.backward()";
    work.futures.emplace_back();
    at::Tensor future = ex.NewFuture(meta, &work.futures.back());
    work.segment_futures.emplace_back(value, 0);
    ex.Submit(std::move(work));
    return future;
  };
  at::Tensor first = piece(0, 1, 0);  // 6
  ex.Submit(MakeWork(Op("aten::mul_", "Scalar"), {first, c10::Scalar(0.5)}, {}, "hook.py:1"));  // 3
  at::Tensor second = piece(1, 2, 1);  // 3 + 2, where one piece would give 6 + 2
  ex.Drain();
  EXPECT_TRUE(first.equal(at::full({3}, 3.0)));
  EXPECT_TRUE(second.equal(at::full({3}, 5.0)));
}

}  // namespace
}  // namespace terra::runtime
