#include "launcher/line_prefixer.h"

#include <gtest/gtest.h>

namespace terra::launcher {
namespace {

TEST(LinePrefixerTest, PrefixesWholeLinesAcrossChunks) {
  LinePrefixer p("[1] ");
  EXPECT_EQ(p.Feed("hel"), "");
  EXPECT_EQ(p.Feed("lo\nwor"), "[1] hello\n");
  EXPECT_EQ(p.Feed("ld\n\nx"), "[1] world\n[1] \n");
  EXPECT_EQ(p.Flush(), "[1] x\n");
  EXPECT_EQ(p.Flush(), "");
}

TEST(LinePrefixerTest, BoundsAPartialLine) {
  LinePrefixer p(">");
  std::string chunk(LinePrefixer::kMaxPendingBytes, 'a');
  std::string out = p.Feed(chunk);
  EXPECT_EQ(out, ">" + chunk + "\n");
  EXPECT_EQ(p.Flush(), "");
}

TEST(LinePrefixerTest, EmptyPrefixPassesThrough) {
  LinePrefixer p("");
  EXPECT_EQ(p.Feed("a\nb\n"), "a\nb\n");
}

}  // namespace
}  // namespace terra::launcher
