#include "comm/control/environment.h"

#include <cerrno>
#include <cstdlib>
#include <limits>
#include <string>

#include "runtime/base/check.h"

namespace terra::comm::control {
namespace {

constexpr const char* kHint =
    "terrarun sets it for every rank: start the program with `terrarun -np N ...`, or unset "
    "TERRA_JOB_SECRET to run it outside a job";

const char* Require(const EnvironmentLookup& lookup, const char* name) {
  const char* value = lookup(name);
  TERRA_CHECK(value != nullptr, "environment variable ", name,
              " is not set although TERRA_JOB_SECRET is; ", kHint);
  return value;
}

// A decimal integer in [min, max], the whole string.
int64_t ParseInteger(const char* name, const char* value, int64_t min, int64_t max) {
  errno = 0;
  char* end = nullptr;
  long long parsed = std::strtoll(value, &end, 10);
  TERRA_CHECK(*value != '\0' && *end == '\0' && errno == 0 && parsed >= min && parsed <= max,
              "environment variable ", name, "='", value, "' is not an integer in [", min, ", ",
              max, "]; ", kHint);
  return parsed;
}

}  // namespace

std::optional<JobEnvironment> JobFromEnvironment() {
  return JobFromEnvironment([](const char* name) { return std::getenv(name); });
}

std::optional<JobEnvironment> JobFromEnvironment(const EnvironmentLookup& lookup) {
  const char* secret = lookup("TERRA_JOB_SECRET");
  if (secret == nullptr) return std::nullopt;
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  JobEnvironment env;
  env.world_size =
      static_cast<int>(ParseInteger("WORLD_SIZE", Require(lookup, "WORLD_SIZE"), 1, kIntMax));
  env.rank = static_cast<int>(ParseInteger("RANK", Require(lookup, "RANK"), 0, env.world_size - 1));
  const char* local_rank = lookup("LOCAL_RANK");
  env.local_rank = local_rank == nullptr
                       ? env.rank
                       : static_cast<int>(ParseInteger("LOCAL_RANK", local_rank, 0, kIntMax));
  const char* interval = lookup("TERRA_HEARTBEAT_INTERVAL_MS");
  if (interval != nullptr) {
    env.heartbeat_interval = std::chrono::milliseconds(
        ParseInteger("TERRA_HEARTBEAT_INTERVAL_MS", interval, 1, kIntMax));
  }
  env.client.host = Require(lookup, "MASTER_ADDR");
  TERRA_CHECK(!env.client.host.empty(), "environment variable MASTER_ADDR is empty; ", kHint);
  env.client.port =
      static_cast<uint16_t>(ParseInteger("MASTER_PORT", Require(lookup, "MASTER_PORT"), 1, 65535));
  env.client.secret = secret;
  env.client.rank = env.rank;
  return env;
}

}  // namespace terra::comm::control
