#include <gtest/gtest.h>

#include <map>
#include <string>

#include "comm/control/environment.h"
#include "runtime/base/check.h"

namespace terra::comm::control {
namespace {

using Variables = std::map<std::string, std::string>;

std::optional<JobEnvironment> Parse(const Variables& vars) {
  return JobFromEnvironment([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

Variables Terrarun() {
  return {{"TERRA_JOB_SECRET", "abc123"},
          {"RANK", "1"},
          {"WORLD_SIZE", "4"},
          {"LOCAL_RANK", "1"},
          {"MASTER_ADDR", "10.0.0.7"},
          {"MASTER_PORT", "29500"},
          {"TERRA_HEARTBEAT_INTERVAL_MS", "250"}};
}

// The message of the terra::Error that parsing `vars` throws.
std::string ErrorOf(const Variables& vars) {
  try {
    Parse(vars);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected terra::Error";
  return "";
}

TEST(JobEnvironmentTest, NotUnderTerrarunWithoutSecret) {
  Variables vars = Terrarun();
  vars.erase("TERRA_JOB_SECRET");
  EXPECT_FALSE(Parse(vars).has_value());
  EXPECT_FALSE(Parse({}).has_value());
}

TEST(JobEnvironmentTest, ReadsEveryVariable) {
  auto env = Parse(Terrarun());
  ASSERT_TRUE(env.has_value());
  EXPECT_EQ(env->rank, 1);
  EXPECT_EQ(env->world_size, 4);
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->heartbeat_interval, std::chrono::milliseconds(250));
  EXPECT_EQ(env->client.host, "10.0.0.7");
  EXPECT_EQ(env->client.port, 29500);
  EXPECT_EQ(env->client.secret, "abc123");
  EXPECT_EQ(env->client.rank, 1);
}

TEST(JobEnvironmentTest, OptionalVariablesHaveDefaults) {
  Variables vars = Terrarun();
  vars.erase("LOCAL_RANK");
  vars.erase("TERRA_HEARTBEAT_INTERVAL_MS");
  auto env = Parse(vars);
  ASSERT_TRUE(env.has_value());
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->heartbeat_interval, std::chrono::milliseconds(1000));
}

TEST(JobEnvironmentTest, MissingVariableIsNamed) {
  for (const char* name : {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) {
    Variables vars = Terrarun();
    vars.erase(name);
    std::string message = ErrorOf(vars);
    EXPECT_NE(message.find(std::string(name) + " is not set"), std::string::npos) << message;
    EXPECT_NE(message.find("terrarun"), std::string::npos) << message;
  }
}

TEST(JobEnvironmentTest, MalformedVariableIsNamedWithItsValue) {
  const std::pair<const char*, const char*> cases[] = {
      {"RANK", "one"},      {"RANK", "1x"},
      {"RANK", ""},         {"RANK", "-1"},
      {"RANK", "4"},  // not below WORLD_SIZE
      {"WORLD_SIZE", "0"},  {"WORLD_SIZE", "99999999999"},
      {"LOCAL_RANK", "a"},  {"MASTER_PORT", "70000"},
      {"MASTER_PORT", "0"}, {"TERRA_HEARTBEAT_INTERVAL_MS", "fast"}};
  for (const auto& [name, value] : cases) {
    Variables vars = Terrarun();
    vars[name] = value;
    std::string message = ErrorOf(vars);
    EXPECT_NE(message.find(std::string(name) + "='" + value + "'"), std::string::npos)
        << name << "=" << value << ": " << message;
  }
}

TEST(JobEnvironmentTest, EmptyHostIsRefused) {
  Variables vars = Terrarun();
  vars["MASTER_ADDR"] = "";
  EXPECT_NE(ErrorOf(vars).find("MASTER_ADDR is empty"), std::string::npos);
}

}  // namespace
}  // namespace terra::comm::control
