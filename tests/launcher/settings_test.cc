#include "launcher/settings.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace terra::launcher {
namespace {

ParseResult Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "terrarun");
  return ParseCommandLine(args);
}

TEST(SettingsTest, ProgramAndItsArgumentsAreSeparatedFromOptions) {
  ParseResult r = Parse({"-np", "4", "train.py", "--lr", "0.1", "-np", "9"});
  ASSERT_EQ(r.action, ParseResult::Action::kRun) << r.error;
  EXPECT_EQ(r.settings.num_ranks, 4);
  EXPECT_EQ(r.settings.program, "train.py");
  EXPECT_EQ(r.settings.args, (std::vector<std::string>{"--lr", "0.1", "-np", "9"}));
}

TEST(SettingsTest, AcceptsEqualsFormAndAliases) {
  ParseResult r = Parse({"--nproc=3", "--mode=trace", "--heartbeat-timeout=2.5", "x"});
  ASSERT_EQ(r.action, ParseResult::Action::kRun) << r.error;
  EXPECT_EQ(r.settings.num_ranks, 3);
  EXPECT_EQ(r.settings.mode, Mode::kTrace);
  EXPECT_EQ(r.settings.heartbeat_timeout.count(), 2500);
  EXPECT_EQ(r.settings.heartbeat_interval.count(), 250);
  EXPECT_EQ(Parse({"-n", "2", "x"}).settings.num_ranks, 2);
}

TEST(SettingsTest, DoubleDashEndsOptions) {
  ParseResult r = Parse({"--", "-weird-name", "a"});
  ASSERT_EQ(r.action, ParseResult::Action::kRun) << r.error;
  EXPECT_EQ(r.settings.program, "-weird-name");
}

TEST(SettingsTest, RejectsBadRankCounts) {
  for (const char* bad : {"0", "-1", "abc", "2x", "", "99999"}) {
    ParseResult r = Parse({"-np", bad, "train.py"});
    EXPECT_EQ(r.action, ParseResult::Action::kError) << bad;
    EXPECT_NE(r.error.find("number of ranks"), std::string::npos) << r.error;
  }
  EXPECT_EQ(Parse({"train.py", "-np"}).settings.args, std::vector<std::string>{"-np"});
  EXPECT_EQ(Parse({"-np"}).action, ParseResult::Action::kError);
}

TEST(SettingsTest, RejectsUnknownOptionsAndMissingProgram) {
  ParseResult r = Parse({"--frobnicate", "train.py"});
  EXPECT_EQ(r.action, ParseResult::Action::kError);
  EXPECT_NE(r.error.find("--frobnicate"), std::string::npos);
  r = Parse({"-np", "2"});
  EXPECT_EQ(r.action, ParseResult::Action::kError);
  EXPECT_NE(r.error.find("no program"), std::string::npos);
  EXPECT_EQ(Parse({"--mode", "fast", "x"}).action, ParseResult::Action::kError);
}

TEST(SettingsTest, HostListsSelectMpirunAndSumSlots) {
  ParseResult r = Parse({"-H", "a:2,b,c:3", "x"});
  ASSERT_EQ(r.action, ParseResult::Action::kRun) << r.error;
  EXPECT_TRUE(r.settings.uses_mpirun());
  ASSERT_EQ(r.settings.hosts.size(), 3u);
  EXPECT_EQ(r.settings.hosts[1].host, "b");
  EXPECT_EQ(r.settings.hosts[1].slots, 1);
  EXPECT_EQ(r.settings.num_ranks, 6);
  EXPECT_EQ(Parse({"-H", "a:0", "x"}).action, ParseResult::Action::kError);
  EXPECT_EQ(Parse({"-H", ":2", "x"}).action, ParseResult::Action::kError);
  EXPECT_EQ(Parse({"-H", "a", "--hostfile", "f", "x"}).action, ParseResult::Action::kError);
  EXPECT_FALSE(Parse({"x"}).settings.uses_mpirun());
}

TEST(SettingsTest, DebugIsSingleProcess) {
  EXPECT_EQ(Parse({"--debug", "x"}).action, ParseResult::Action::kRun);
  EXPECT_EQ(Parse({"--debug", "-np", "1", "x"}).action, ParseResult::Action::kRun);
  ParseResult r = Parse({"--debug", "-np", "2", "x"});
  EXPECT_EQ(r.action, ParseResult::Action::kError);
  EXPECT_NE(r.error.find("single process"), std::string::npos);
}

TEST(SettingsTest, ReportIsOffByDefaultAndDebugImpliesIt) {
  EXPECT_FALSE(Parse({"x"}).settings.report);
  EXPECT_TRUE(Parse({"--report", "x"}).settings.report);
  EXPECT_TRUE(Parse({"--debug", "x"}).settings.report);
  EXPECT_TRUE(Parse({"--debug", "--mode", "trace", "x"}).settings.report);
  // --debug stays usable in eager mode, where there is nothing to report.
  ParseResult r = Parse({"--debug", "--mode", "eager", "x"});
  ASSERT_EQ(r.action, ParseResult::Action::kRun) << r.error;
  EXPECT_FALSE(r.settings.report);
}

TEST(SettingsTest, DotFileIsMadeAbsolute) {
  namespace fs = std::filesystem;
  EXPECT_EQ(Parse({"x"}).settings.dot, "");
  std::string expected = (fs::current_path() / "x.dot").string();
  for (auto args : {std::vector<std::string>{"--dot", "x.dot", "p"},
                    std::vector<std::string>{"--dot=x.dot", "p"}}) {
    ParseResult r = Parse(args);
    ASSERT_EQ(r.action, ParseResult::Action::kRun) << r.error;
    EXPECT_EQ(r.settings.dot, expected);
    EXPECT_EQ(r.settings.program, "p");
  }
  std::string absolute = (fs::temp_directory_path() / "g.dot").string();
  EXPECT_EQ(Parse({"--dot", absolute, "p"}).settings.dot, absolute);
}

TEST(SettingsTest, RejectsDotFilesThatCannotBeWritten) {
  ParseResult r = Parse({"--dot", "/nonexistent-terra-dir/g.dot", "x"});
  EXPECT_EQ(r.action, ParseResult::Action::kError);
  EXPECT_NE(r.error.find("/nonexistent-terra-dir"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("does not exist"), std::string::npos) << r.error;
  r = Parse({"--dot=", "x"});
  EXPECT_EQ(r.action, ParseResult::Action::kError);
  EXPECT_NE(r.error.find("empty"), std::string::npos) << r.error;
  r = Parse({"--dot", std::filesystem::temp_directory_path().string(), "x"});
  EXPECT_EQ(r.action, ParseResult::Action::kError);
  EXPECT_NE(r.error.find("is a directory"), std::string::npos) << r.error;
  EXPECT_EQ(Parse({"--dot"}).action, ParseResult::Action::kError);
}

TEST(SettingsTest, ReportAndDotNeedTracing) {
  for (auto args : {std::vector<std::string>{"--mode", "eager", "--report", "x"},
                    std::vector<std::string>{"--report", "--mode=eager", "x"},
                    std::vector<std::string>{"--mode", "eager", "--dot", "g.dot", "x"}}) {
    ParseResult r = Parse(args);
    EXPECT_EQ(r.action, ParseResult::Action::kError) << args[1];
    EXPECT_NE(r.error.find("needs tracing: use --mode trace or auto"), std::string::npos)
        << r.error;
  }
  EXPECT_EQ(Parse({"--mode", "trace", "--report", "--dot", "g.dot", "x"}).action,
            ParseResult::Action::kRun);
  EXPECT_EQ(Parse({"--mode", "auto", "--report", "x"}).action, ParseResult::Action::kRun);
}

TEST(SettingsTest, HelpAndVersion) {
  EXPECT_EQ(Parse({"--help"}).action, ParseResult::Action::kHelp);
  EXPECT_EQ(Parse({"-h", "x"}).action, ParseResult::Action::kHelp);
  EXPECT_EQ(Parse({"--version"}).action, ParseResult::Action::kVersion);
  EXPECT_NE(HelpText().find("-np"), std::string::npos);
  EXPECT_NE(HelpText().find("--report"), std::string::npos);
  EXPECT_NE(HelpText().find("--dot FILE"), std::string::npos);
}

}  // namespace
}  // namespace terra::launcher
