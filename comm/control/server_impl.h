// ControlServer::Impl, shared by server.cc (lifecycle, connections, framing,
// heartbeat checks) and server_requests.cc (what each message does). Private
// to terra_control.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>

#include "comm/control/heartbeat_monitor.h"
#include "comm/control/protocol.h"
#include "comm/control/server.h"
#include "comm/control/store.h"
#include "runtime/base/status.h"

namespace terra::comm::control {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// Everything below runs on the I/O thread except the public entry points
// (constructor, SetRankLostHandler, Start, Stop and the accessors).
class ControlServer::Impl {
 public:
  explicit Impl(ServerOptions options)
      : options_(std::move(options)),
        acceptor_(io_),
        accept_retry_(io_),
        heartbeat_check_(io_),
        heartbeats_(options_.heartbeat_timeout) {}

  void SetRankLostHandler(RankLostHandler handler) {
    std::lock_guard lock(handler_mutex_);
    handler_ = std::move(handler);
  }

  void Start();
  void Stop();

  uint16_t port() const { return port_.load(); }
  int64_t refused_connections() const { return refused_.load(); }
  int64_t malformed_messages() const { return malformed_.load(); }

 private:
  struct Parked;

  struct Connection {
    Connection(tcp::socket s, asio::io_context& io)
        : socket(std::move(s)), handshake_timer(io) {}
    tcp::socket socket;
    asio::steady_timer handshake_timer;
    std::string peer;
    unsigned char header[4] = {};
    std::string payload;
    std::deque<std::string> outbox;  // whole frames; the front one is being written
    bool writing = false;
    bool close_after_write = false;
    bool closed = false;
    bool handshaken = false;
    bool goodbye = false;
    Channel channel = Channel::kStore;
    int64_t rank = kObserverRank;
    std::vector<std::shared_ptr<Parked>> parked;
  };
  using ConnPtr = std::shared_ptr<Connection>;

  // A kGet or kWait waiting for its keys; answered exactly once (done).
  struct Parked {
    explicit Parked(asio::io_context& io) : timer(io) {}
    asio::steady_timer timer;
    Store::ParkId id = 0;
    bool done = false;
  };

  void Accept();
  void ReadHeader(const ConnPtr& c);
  void OnPayload(const ConnPtr& c);
  void OnHello(const ConnPtr& c, const Message& m);
  bool OnStoreRequest(const ConnPtr& c, const Message& m);
  bool OnHeartbeatMessage(const ConnPtr& c, const Message& m);
  void Park(const ConnPtr& c, std::vector<std::string> keys, int64_t timeout_ms, bool is_get);
  void Finish(const ConnPtr& c, const std::shared_ptr<Parked>& p);
  void Send(const ConnPtr& c, const Message& m);
  void SendAndClose(const ConnPtr& c, const Message& m);
  void WriteNext(const ConnPtr& c);
  void Refuse(const ConnPtr& c, StatusCode code, std::string why);
  void Reject(const ConnPtr& c, std::string why);
  void Close(const ConnPtr& c);
  void CheckHeartbeats();
  void ReportLost(const RankLostEvent& event);

  std::chrono::milliseconds CheckPeriod() const {
    using std::chrono::milliseconds;
    return std::clamp(options_.heartbeat_timeout / 10, milliseconds(10), milliseconds(1000));
  }

  const ServerOptions options_;
  // Declared before every object that uses it, so destroyed after them all:
  // handlers still queued in it own connections whose sockets and timers
  // belong to it.
  asio::io_context io_;
  tcp::acceptor acceptor_;
  asio::steady_timer accept_retry_;
  asio::steady_timer heartbeat_check_;
  std::set<ConnPtr> connections_;
  Store store_;
  HeartbeatMonitor heartbeats_;
  bool stopping_ = false;

  std::mutex handler_mutex_;
  RankLostHandler handler_;

  std::mutex lifecycle_mutex_;  // Start and Stop
  bool started_ = false;
  bool stopped_ = false;
  std::thread thread_;
  std::atomic<std::thread::id> io_thread_id_{};

  std::atomic<uint16_t> port_{0};
  std::atomic<int64_t> refused_{0};
  std::atomic<int64_t> malformed_{0};
};

inline Message ErrorReply(StatusCode code, std::string text) {
  return Message{MessageType::kError, {std::move(text)}, {static_cast<int64_t>(code)}};
}

}  // namespace terra::comm::control
