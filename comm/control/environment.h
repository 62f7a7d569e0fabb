// JobEnvironment: what a rank started by terrarun learns from its environment
// (launcher/job.cc and local_launch.cc set the variables): its rank, the job's
// size, and how to reach the job's control-plane server.
//
// Variables read: TERRA_JOB_SECRET (its absence means "not under terrarun"),
// RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (required once the secret is
// set), LOCAL_RANK (defaults to RANK), TERRA_HEARTBEAT_INTERVAL_MS (defaults
// to 1000).
#pragma once

#include <chrono>
#include <functional>
#include <optional>

#include "comm/control/client.h"

namespace terra::comm::control {

struct JobEnvironment {
  int rank = -1;
  int world_size = 0;
  int local_rank = -1;
  // host, port, secret and rank filled in; the timeouts keep their defaults.
  ClientOptions client;
  // How often this rank's Heartbeat should beat.
  std::chrono::milliseconds heartbeat_interval{1000};
};

// Returns the variable's value, or nullptr when it is unset.
using EnvironmentLookup = std::function<const char*(const char* name)>;

// nullopt when TERRA_JOB_SECRET is unset. Throws terra::Error naming the
// variable, its value and what to do when a variable is missing or malformed
// (not a decimal integer, out of range, RANK >= WORLD_SIZE, empty host).
std::optional<JobEnvironment> JobFromEnvironment();
// The same, reading variables through `lookup` (for tests).
std::optional<JobEnvironment> JobFromEnvironment(const EnvironmentLookup& lookup);

}  // namespace terra::comm::control
