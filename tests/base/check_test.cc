#include "runtime/base/check.h"

#include <gtest/gtest.h>

#include <string>

namespace terra {
namespace {

TEST(CheckTest, PassingCheckDoesNotEvaluateTheMessage) {
  int evaluated = 0;
  auto part = [&] {
    ++evaluated;
    return "x";
  };
  TERRA_CHECK(1 + 1 == 2, "never built ", part());
  TERRA_INTERNAL_CHECK(true, "never built ", part());
  EXPECT_EQ(evaluated, 0);
}

TEST(CheckTest, FailingCheckThrowsErrorWithTheMessage) {
  int world_size = 3;
  try {
    TERRA_CHECK(world_size % 2 == 0, "world_size must be even, got ", world_size,
                "; pass --nproc 4");
    FAIL() << "TERRA_CHECK did not throw";
  } catch (const InternalError&) {
    FAIL() << "a user's mistake is not an internal error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "world_size must be even, got 3; pass --nproc 4");
  }
}

TEST(CheckTest, InternalCheckNamesFileLineAndCondition) {
  try {
    TERRA_INTERNAL_CHECK(2 < 1, "bad state ", 7);
    FAIL() << "TERRA_INTERNAL_CHECK did not throw";
  } catch (const InternalError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("check_test.cc:"), std::string::npos) << what;
    EXPECT_NE(what.find("'2 < 1'"), std::string::npos) << what;
    EXPECT_NE(what.find("bad state 7"), std::string::npos) << what;
    EXPECT_NE(what.find("bug in Terra"), std::string::npos) << what;
  }
}

TEST(CheckTest, InternalCheckWithoutMessage) {
  try {
    TERRA_INTERNAL_CHECK(false);
    FAIL() << "TERRA_INTERNAL_CHECK did not throw";
  } catch (const InternalError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("check 'false' failed"), std::string::npos) << what;
    EXPECT_EQ(what.find("failed: "), std::string::npos) << what;
  }
}

TEST(CheckTest, ErrorsFormAHierarchy) {
  EXPECT_THROW(throw TimeoutError("late"), Error);
  EXPECT_THROW(throw InternalError("bug"), Error);
  EXPECT_THROW(throw Error("e"), std::runtime_error);
  EXPECT_EQ(StrCat("a", 1, '-', 2.5), "a1-2.5");
}

}  // namespace
}  // namespace terra
