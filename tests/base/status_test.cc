#include "runtime/base/status.h"

#include <gtest/gtest.h>

#include <string>

#include "runtime/base/check.h"

namespace terra {
namespace {

TEST(StatusTest, DefaultIsOk) {
  Status status;
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kOk);
  EXPECT_NO_THROW(status.ThrowIfError());
  EXPECT_TRUE(Status::Ok().ok());
}

TEST(StatusTest, CarriesCodeAndMessage) {
  Status status(StatusCode::kUnavailable, "rank 3 is gone");
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(status.message(), "rank 3 is gone");
}

TEST(StatusTest, TimeoutBecomesTimeoutError) {
  try {
    Status(StatusCode::kTimeout, "barrier took too long").ThrowIfError();
    FAIL() << "did not throw";
  } catch (const TimeoutError& e) {
    EXPECT_STREQ(e.what(), "barrier took too long");
  }
}

TEST(StatusTest, InternalBecomesInternalError) {
  EXPECT_THROW(Status(StatusCode::kInternal, "bug").ThrowIfError(), InternalError);
}

TEST(StatusTest, OtherCodesBecomePlainErrors) {
  for (StatusCode code : {StatusCode::kInvalidArgument, StatusCode::kUnavailable,
                          StatusCode::kPermissionDenied, StatusCode::kAborted}) {
    try {
      Status(code, "message").ThrowIfError();
      FAIL() << StatusCodeName(code) << " did not throw";
    } catch (const TimeoutError&) {
      FAIL() << StatusCodeName(code) << " became a TimeoutError";
    } catch (const InternalError&) {
      FAIL() << StatusCodeName(code) << " became an InternalError";
    } catch (const Error& e) {
      EXPECT_STREQ(e.what(), "message");
    }
  }
}

TEST(StatusTest, CodesHaveNames) {
  EXPECT_STREQ(StatusCodeName(StatusCode::kOk), "ok");
  EXPECT_STREQ(StatusCodeName(StatusCode::kTimeout), "timeout");
  EXPECT_STREQ(StatusCodeName(StatusCode::kPermissionDenied), "permission denied");
}

}  // namespace
}  // namespace terra
