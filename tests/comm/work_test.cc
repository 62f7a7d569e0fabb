#include "comm/work.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "runtime/base/check.h"

namespace terra::comm {
namespace {

using std::chrono::milliseconds;

TEST(WorkTest, CompletesFromAnotherThread) {
  Work work("allreduce(sum) of 4 x float32 on rank 0 of 2 [test]");
  EXPECT_FALSE(work.IsCompleted());
  EXPECT_FALSE(work.Result().has_value());
  std::thread completer([&] {
    std::this_thread::sleep_for(milliseconds(20));
    EXPECT_TRUE(work.Complete(Status::Ok()));
  });
  work.Wait();
  completer.join();
  EXPECT_TRUE(work.IsCompleted());
  EXPECT_TRUE(work.Result()->ok());
}

TEST(WorkTest, WaitTimesOutNamingTheCollectiveAndStaysPending) {
  Work work("allreduce(sum) of 4 x float32 on rank 1 of 2 [test]");
  try {
    work.Wait(milliseconds(10));
    FAIL() << "expected TimeoutError";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("allreduce(sum) of 4 x float32 on rank 1 of 2"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(work.IsCompleted());
  work.Complete(Status::Ok());
  EXPECT_NO_THROW(work.Wait(milliseconds(10)));
}

TEST(WorkTest, ErrorIsRethrownOnEveryWait) {
  Work work("barrier on rank 0 of 2 [test]");
  work.Complete(Status(StatusCode::kAborted, "rank 1 is gone"));
  for (int i = 0; i < 2; ++i) {
    try {
      work.Wait();
      FAIL() << "expected Error";
    } catch (const TimeoutError&) {
      FAIL() << "an abort is not a timeout";
    } catch (const Error& e) {
      EXPECT_STREQ(e.what(), "rank 1 is gone");
    }
  }
}

TEST(WorkTest, TimeoutStatusBecomesTimeoutError) {
  Work work("barrier on rank 0 of 2 [test]");
  work.Complete(Status(StatusCode::kTimeout, "barrier timed out"));
  EXPECT_THROW(work.Wait(), TimeoutError);
}

TEST(WorkTest, OnlyTheFirstCompletionCounts) {
  Work work("barrier on rank 0 of 2 [test]");
  EXPECT_TRUE(work.Complete(Status(StatusCode::kTimeout, "late")));
  EXPECT_FALSE(work.Complete(Status::Ok()));
  EXPECT_EQ(work.Result()->code(), StatusCode::kTimeout);
}

TEST(WorkTest, ManyWaitersAllWake) {
  Work work("barrier on rank 0 of 2 [test]");
  std::vector<std::thread> waiters;
  std::atomic<int> woke{0};
  for (int i = 0; i < 4; ++i) {
    waiters.emplace_back([&] {
      EXPECT_THROW(work.Wait(milliseconds(5000)), Error);
      ++woke;
    });
  }
  work.Complete(Status(StatusCode::kInternal, "boom"));
  for (auto& t : waiters) t.join();
  EXPECT_EQ(woke, 4);
}

}  // namespace
}  // namespace terra::comm
