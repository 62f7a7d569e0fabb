// ControlClient: a rank's (or an observer's) connection to the ControlServer's
// key-value store, and Heartbeat: the rank's liveness signal.
//
// Blocking semantics: every call blocks the calling thread until the server
// answers or its deadline passes, then throws terra::TimeoutError. A refused
// handshake throws terra::Error naming the cause (wrong secret, wrong protocol
// version). A lost connection throws terra::Error. Calls on one client are
// serialized by an internal mutex; use one client per thread for concurrency.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/control/protocol.h"

namespace terra::comm::control {

struct ClientOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string secret;
  int64_t rank = kObserverRank;
  // Connecting is retried until this passes: ranks may start before the server.
  std::chrono::milliseconds connect_timeout{60000};
  // Deadline for each request other than Get/Wait (which carry their own).
  std::chrono::milliseconds request_timeout{60000};
  uint32_t max_message_bytes = kDefaultMaxMessageBytes;
};

class ControlClient {
 public:
  // Connects and completes the handshake; throws on failure.
  explicit ControlClient(ClientOptions options);
  ~ControlClient();
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  void Set(const std::string& key, const std::string& value);
  // Waits until the key exists, then returns its value.
  std::string Get(const std::string& key, std::chrono::milliseconds timeout);
  // Waits until every key exists.
  void Wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout);
  // Atomically adds delta to the integer stored at key (missing: 0); returns the new value.
  int64_t Add(const std::string& key, int64_t delta);
  // True if every key exists; does not wait.
  bool Check(const std::vector<std::string>& keys);

  // Blocks until world_size participants have called Barrier with the same
  // name the same number of times. Repeated calls with one name are separate
  // barriers (the client numbers them).
  void Barrier(const std::string& name, int64_t world_size, std::chrono::milliseconds timeout);

  const ClientOptions& options() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Sends kHeartbeat every interval on its own connection and thread, from
// construction until destruction, which sends kGoodbye (a clean exit is not a
// lost rank). If the process dies or stops, the server notices.
class Heartbeat {
 public:
  Heartbeat(ClientOptions options, std::chrono::milliseconds interval);
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

  // Stops beating without kGoodbye (for tests that simulate a silent rank).
  void StopSilently();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace terra::comm::control
