// ControlServer: the job's control-plane endpoint. It serves the rendezvous
// key-value store and watches every rank's heartbeat.
//
// Who runs it: the launcher (terrarun) for the whole job; the ranks connect to
// it at MASTER_ADDR:MASTER_PORT (docs/architecture.md explains why the launcher
// and not rank 0 hosts it).
//
// Security: every connection must open with kHello carrying the per-job
// secret; any other first message, a wrong secret or a wrong protocol version
// is answered with kError and the connection is closed. A connection that says
// nothing within handshake_timeout is closed. Frames longer than
// max_message_bytes and malformed payloads close the connection; the server
// and every other connection carry on.
//
// Threading: Start() binds and spawns one I/O thread that runs everything
// (store, timers, heartbeats). The RankLost handler runs on that thread and
// must not block. Stop() (also run by the destructor) closes all connections
// and joins the thread. All public methods are thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace terra::comm::control {

enum class RankLostReason {
  kConnectionClosed,  // the heartbeat channel closed without kGoodbye
  kHeartbeatTimeout,  // no heartbeat for heartbeat_timeout (a hung or stopped rank)
};

const char* RankLostReasonName(RankLostReason reason);

struct ServerOptions {
  std::string bind_address = "0.0.0.0";
  uint16_t port = 0;  // 0 picks a free port; port() tells which
  std::string secret;
  std::chrono::milliseconds heartbeat_timeout{10000};
  std::chrono::milliseconds handshake_timeout{5000};
  uint32_t max_message_bytes = 64u << 20;
};

struct RankLostEvent {
  int64_t rank = 0;
  RankLostReason reason = RankLostReason::kConnectionClosed;
  std::chrono::milliseconds silent_for{0};  // time since the rank's last heartbeat
};

class ControlServer {
 public:
  using RankLostHandler = std::function<void(const RankLostEvent&)>;

  explicit ControlServer(ServerOptions options);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Called at most once per rank, on the I/O thread. Set before Start().
  void SetRankLostHandler(RankLostHandler handler);

  // Binds and starts serving. Throws terra::Error if the address cannot be bound.
  void Start();
  void Stop();

  uint16_t port() const;

  // Counters for tests and reports.
  int64_t refused_connections() const;
  int64_t malformed_messages() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace terra::comm::control
