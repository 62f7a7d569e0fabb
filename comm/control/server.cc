#include "comm/control/server.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>

#include "comm/control/protocol.h"
#include "comm/control/store.h"
#include "runtime/base/check.h"
#include "runtime/base/log.h"
#include "runtime/base/status.h"

namespace terra::comm::control {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Before the handshake a peer is a stranger: its frames may not make us
// allocate more than this, whatever max_message_bytes allows afterwards.
constexpr uint32_t kMaxHelloBytes = 64u << 10;
// Longest wait a kGet or kWait may ask for; longer ones are clamped.
constexpr milliseconds kMaxWait = std::chrono::hours(24 * 30);

// Compares in time that depends on the expected secret's length only.
bool SecretsEqual(std::string_view expected, std::string_view given) {
  unsigned char diff = expected.size() == given.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    unsigned char other = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= static_cast<unsigned char>(expected[i]) ^ other;
  }
  return diff == 0;
}

Message ErrorReply(StatusCode code, std::string text) {
  return Message{MessageType::kError, {std::move(text)}, {static_cast<int64_t>(code)}};
}

std::string QuotedList(const std::vector<std::string>& keys) {
  std::string out;
  for (const std::string& key : keys) out += StrCat(out.empty() ? "" : ", ", "'", key, "'");
  return out;
}

}  // namespace

const char* RankLostReasonName(RankLostReason reason) {
  switch (reason) {
    case RankLostReason::kConnectionClosed: return "connection closed";
    case RankLostReason::kHeartbeatTimeout: return "heartbeat timeout";
  }
  return "unknown";
}

// Everything below runs on the I/O thread except the public entry points
// (constructor, SetRankLostHandler, Start, Stop and the accessors).
class ControlServer::Impl {
 public:
  explicit Impl(ServerOptions options)
      : options_(std::move(options)),
        acceptor_(io_),
        accept_retry_(io_),
        heartbeat_check_(io_) {}

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

  // A rank whose heartbeat channel is open.
  struct Watched {
    Clock::time_point last_seen;
    const Connection* connection = nullptr;
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
  void ReportLost(int64_t rank, RankLostReason reason, milliseconds silent_for);

  milliseconds CheckPeriod() const {
    return std::clamp(options_.heartbeat_timeout / 10, milliseconds(10), milliseconds(1000));
  }

  const ServerOptions options_;
  // Declared first so that it is destroyed last: handlers still queued in it
  // own connections whose sockets and timers belong to it.
  asio::io_context io_;
  tcp::acceptor acceptor_;
  asio::steady_timer accept_retry_;
  asio::steady_timer heartbeat_check_;
  std::set<ConnPtr> connections_;
  Store store_;
  std::map<int64_t, Watched> watched_;
  std::set<int64_t> reported_;
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

void ControlServer::Impl::Start() {
  std::lock_guard lock(lifecycle_mutex_);
  TERRA_CHECK(!started_, "ControlServer::Start called twice; create a new server instead");
  std::string where = StrCat(options_.bind_address, ":", options_.port);
  boost::system::error_code ec;
  tcp::resolver resolver(io_);
  auto endpoints = resolver.resolve(options_.bind_address, std::to_string(options_.port),
                                    tcp::resolver::passive, ec);
  TERRA_CHECK(!ec && !endpoints.empty(), "cannot resolve the control plane's bind address ",
              where, ": ", ec.message());
  tcp::endpoint endpoint = endpoints.begin()->endpoint();
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  TERRA_CHECK(!ec, "cannot bind the Terra control plane to ", where, ": ", ec.message(),
              "; choose another MASTER_PORT or stop the process that holds this one");
  port_ = acceptor_.local_endpoint().port();
  started_ = true;

  Accept();
  CheckHeartbeats();
  thread_ = std::thread([this] {
    io_thread_id_ = std::this_thread::get_id();
    for (;;) {
      try {
        io_.run();
        return;
      } catch (const std::exception& e) {
        TERRA_LOG(kError, "control plane: unexpected exception on the I/O thread: ", e.what());
      }
    }
  });
  TERRA_LOG(kInfo, "control plane listening on ", options_.bind_address, ":", port_.load());
}

void ControlServer::Impl::Stop() {
  if (io_thread_id_.load() == std::this_thread::get_id()) {
    // Called from the RankLost handler: joining would deadlock; the
    // destructor's Stop joins.
    io_.stop();
    return;
  }
  std::lock_guard lock(lifecycle_mutex_);
  if (stopped_ || !started_) {
    stopped_ = true;
    return;
  }
  stopped_ = true;
  io_.stop();
  thread_.join();
  // The I/O thread is gone; what it owned is torn down here, without events.
  stopping_ = true;
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  accept_retry_.cancel();
  heartbeat_check_.cancel();
  std::set<ConnPtr> connections = connections_;
  for (const ConnPtr& c : connections) Close(c);
  store_ = Store();
}

void ControlServer::Impl::Accept() {
  acceptor_.async_accept([this](const boost::system::error_code& ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors, say: try again shortly rather than spin.
      TERRA_LOG(kWarning, "control plane: accept failed: ", ec.message());
      accept_retry_.expires_after(milliseconds(100));
      accept_retry_.async_wait([this](const boost::system::error_code& e) {
        if (!e) Accept();
      });
      return;
    }
    auto c = std::make_shared<Connection>(std::move(socket), io_);
    boost::system::error_code ignored;
    c->socket.set_option(tcp::no_delay(true), ignored);
    auto remote = c->socket.remote_endpoint(ignored);
    c->peer = StrCat(remote.address().to_string(), ":", remote.port());
    connections_.insert(c);
    c->handshake_timer.expires_after(options_.handshake_timeout);
    c->handshake_timer.async_wait([this, c](const boost::system::error_code& e) {
      if (e || c->handshaken || c->closed) return;
      ++refused_;
      TERRA_LOG(kWarning, "control plane: closing ", c->peer, ": no hello within ",
                options_.handshake_timeout.count(), " ms");
      Close(c);
    });
    ReadHeader(c);
    Accept();
  });
}

void ControlServer::Impl::ReadHeader(const ConnPtr& c) {
  asio::async_read(c->socket, asio::buffer(c->header),
                   [this, c](const boost::system::error_code& ec, size_t) {
    if (ec) {
      Close(c);
      return;
    }
    uint32_t length = DecodeLength(c->header);
    uint32_t limit = c->handshaken ? options_.max_message_bytes
                                   : std::min(options_.max_message_bytes, kMaxHelloBytes);
    if (length > limit) {
      Reject(c, StrCat("a frame of ", length, " bytes exceeds the limit of ", limit, " bytes"));
      return;
    }
    c->payload.resize(length);
    asio::async_read(c->socket, asio::buffer(c->payload),
                     [this, c](const boost::system::error_code& e, size_t) {
      if (e) {
        Close(c);
        return;
      }
      OnPayload(c);
    });
  });
}

void ControlServer::Impl::OnPayload(const ConnPtr& c) {
  std::string error;
  std::optional<Message> m = DecodePayload(c->payload, &error);
  c->payload.clear();
  if (!m) {
    Reject(c, StrCat("malformed message: ", error));
    return;
  }
  if (!c->handshaken) {
    OnHello(c, *m);
    return;
  }
  bool keep_reading =
      c->channel == Channel::kStore ? OnStoreRequest(c, *m) : OnHeartbeatMessage(c, *m);
  if (keep_reading) ReadHeader(c);
}

void ControlServer::Impl::OnHello(const ConnPtr& c, const Message& m) {
  if (m.type != MessageType::kHello) {
    Refuse(c, StatusCode::kPermissionDenied,
           StrCat("expected kHello as the first message, got ", MessageTypeName(m.type),
                  "; only Terra control-plane clients may connect here"));
    return;
  }
  if (!SecretsEqual(options_.secret, m.strings[0])) {
    Refuse(c, StatusCode::kPermissionDenied,
           "wrong job secret: this process is not part of this job; start it with the "
           "launcher of the job it should join");
    return;
  }
  int64_t version = m.ints[0];
  int64_t rank = m.ints[1];
  int64_t channel = m.ints[2];
  if (version != kProtocolVersion) {
    Refuse(c, StatusCode::kInvalidArgument,
           StrCat("protocol version mismatch: the control plane speaks version ",
                  kProtocolVersion, ", this process version ", version,
                  "; the launcher and the ranks must run the same Terra release"));
    return;
  }
  if (channel != static_cast<int64_t>(Channel::kStore) &&
      channel != static_cast<int64_t>(Channel::kHeartbeat)) {
    Refuse(c, StatusCode::kInvalidArgument, StrCat("unknown control-plane channel ", channel));
    return;
  }
  if (rank < kObserverRank) {
    Refuse(c, StatusCode::kInvalidArgument, StrCat("invalid rank ", rank));
    return;
  }
  c->handshaken = true;
  c->handshake_timer.cancel();
  c->channel = static_cast<Channel>(channel);
  c->rank = rank;
  Send(c, Message{MessageType::kOk, {}, {}});
  if (c->channel == Channel::kHeartbeat && rank != kObserverRank) {
    if (reported_.count(rank) != 0) {
      TERRA_LOG(kWarning, "control plane: rank ", rank,
                " reconnected its heartbeat after it was reported lost; not watching it again");
    } else {
      watched_[rank] = Watched{Clock::now(), c.get()};
    }
  }
  ReadHeader(c);
}

bool ControlServer::Impl::OnStoreRequest(const ConnPtr& c, const Message& m) {
  switch (m.type) {
    case MessageType::kSet:
      store_.Set(m.strings[0], m.strings[1]);
      Send(c, Message{MessageType::kOk, {}, {}});
      return true;
    case MessageType::kGet:
      if (const std::string* value = store_.Find(m.strings[0])) {
        Send(c, Message{MessageType::kValue, {*value}, {}});
      } else {
        Park(c, m.strings, m.ints[0], /*is_get=*/true);
      }
      return true;
    case MessageType::kWait:
      if (store_.HasAll(m.strings)) {
        Send(c, Message{MessageType::kOk, {}, {}});
      } else {
        Park(c, m.strings, m.ints[0], /*is_get=*/false);
      }
      return true;
    case MessageType::kAdd: {
      std::string error;
      std::optional<int64_t> sum = store_.Add(m.strings[0], m.ints[0], &error);
      Send(c, sum ? Message{MessageType::kInteger, {}, {*sum}}
                  : ErrorReply(StatusCode::kInvalidArgument, error));
      return true;
    }
    case MessageType::kCheck:
      Send(c, Message{MessageType::kInteger, {}, {store_.HasAll(m.strings) ? 1 : 0}});
      return true;
    default:
      Reject(c, StrCat("unexpected ", MessageTypeName(m.type), " on a store connection"));
      return false;
  }
}

bool ControlServer::Impl::OnHeartbeatMessage(const ConnPtr& c, const Message& m) {
  auto it = watched_.find(c->rank);
  bool mine = it != watched_.end() && it->second.connection == c.get();
  switch (m.type) {
    case MessageType::kHeartbeat:
      if (mine) it->second.last_seen = Clock::now();
      return true;
    case MessageType::kGoodbye:
      c->goodbye = true;
      if (mine) watched_.erase(it);
      return true;
    default:
      Reject(c, StrCat("unexpected ", MessageTypeName(m.type), " on a heartbeat connection"));
      return false;
  }
}

void ControlServer::Impl::Park(const ConnPtr& c, std::vector<std::string> keys,
                               int64_t timeout_ms, bool is_get) {
  auto p = std::make_shared<Parked>(io_);
  c->parked.push_back(p);
  std::string key = keys[0];
  p->id = store_.Park(keys, [this, c, p, is_get, key] {
    Finish(c, p);
    if (is_get) {
      Send(c, Message{MessageType::kValue, {*store_.Find(key)}, {}});
    } else {
      Send(c, Message{MessageType::kOk, {}, {}});
    }
  });
  milliseconds timeout = std::clamp(milliseconds(timeout_ms), milliseconds(0), kMaxWait);
  p->timer.expires_after(timeout);
  p->timer.async_wait([this, c, p, keys = std::move(keys),
                       timeout](const boost::system::error_code& ec) {
    if (ec || p->done) return;
    Finish(c, p);
    Send(c, ErrorReply(StatusCode::kTimeout,
                       StrCat("timed out after ", timeout.count(), " ms waiting for ",
                              keys.size() == 1 ? "key " : "keys ", QuotedList(keys),
                              " (missing: ", QuotedList(store_.Missing(keys)), ")")));
  });
}

void ControlServer::Impl::Finish(const ConnPtr& c, const std::shared_ptr<Parked>& p) {
  p->done = true;
  p->timer.cancel();
  store_.Cancel(p->id);
  std::erase(c->parked, p);
}

void ControlServer::Impl::Send(const ConnPtr& c, const Message& m) {
  if (c->closed) return;
  c->outbox.push_back(EncodeFrame(m));
  if (!c->writing) WriteNext(c);
}

void ControlServer::Impl::SendAndClose(const ConnPtr& c, const Message& m) {
  Send(c, m);
  c->close_after_write = true;
  if (!c->writing) Close(c);
}

void ControlServer::Impl::WriteNext(const ConnPtr& c) {
  if (c->outbox.empty()) {
    c->writing = false;
    if (c->close_after_write) Close(c);
    return;
  }
  c->writing = true;
  asio::async_write(c->socket, asio::buffer(c->outbox.front()),
                    [this, c](const boost::system::error_code& ec, size_t) {
    if (ec) {
      Close(c);
      return;
    }
    c->outbox.pop_front();
    WriteNext(c);
  });
}

void ControlServer::Impl::Refuse(const ConnPtr& c, StatusCode code, std::string why) {
  ++refused_;
  TERRA_LOG(kWarning, "control plane: refused ", c->peer, ": ", why);
  SendAndClose(c, ErrorReply(code, std::move(why)));
}

void ControlServer::Impl::Reject(const ConnPtr& c, std::string why) {
  ++malformed_;
  TERRA_LOG(kWarning, "control plane: closing ", c->peer, ": ", why);
  SendAndClose(c, ErrorReply(StatusCode::kInvalidArgument, std::move(why)));
}

void ControlServer::Impl::Close(const ConnPtr& c) {
  if (c->closed) return;
  c->closed = true;
  boost::system::error_code ignored;
  c->socket.shutdown(tcp::socket::shutdown_both, ignored);
  c->socket.close(ignored);
  c->handshake_timer.cancel();
  for (const auto& p : std::vector(c->parked)) Finish(c, p);
  connections_.erase(c);
  if (stopping_ || !c->handshaken || c->channel != Channel::kHeartbeat || c->goodbye) return;
  auto it = watched_.find(c->rank);
  if (it == watched_.end() || it->second.connection != c.get()) return;
  auto silent_for = std::chrono::duration_cast<milliseconds>(Clock::now() - it->second.last_seen);
  watched_.erase(it);
  ReportLost(c->rank, RankLostReason::kConnectionClosed, silent_for);
}

void ControlServer::Impl::CheckHeartbeats() {
  Clock::time_point now = Clock::now();
  for (auto it = watched_.begin(); it != watched_.end();) {
    auto silent_for = std::chrono::duration_cast<milliseconds>(now - it->second.last_seen);
    if (silent_for > options_.heartbeat_timeout) {
      int64_t rank = it->first;
      it = watched_.erase(it);
      ReportLost(rank, RankLostReason::kHeartbeatTimeout, silent_for);
    } else {
      ++it;
    }
  }
  heartbeat_check_.expires_after(CheckPeriod());
  heartbeat_check_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) CheckHeartbeats();
  });
}

void ControlServer::Impl::ReportLost(int64_t rank, RankLostReason reason,
                                     milliseconds silent_for) {
  if (!reported_.insert(rank).second) return;
  TERRA_LOG(kWarning, "control plane: rank ", rank, " lost (", RankLostReasonName(reason),
            ", silent for ", silent_for.count(), " ms)");
  RankLostHandler handler;
  {
    std::lock_guard lock(handler_mutex_);
    handler = handler_;
  }
  if (!handler) return;
  try {
    handler(RankLostEvent{rank, reason, silent_for});
  } catch (const std::exception& e) {
    TERRA_LOG(kError, "control plane: the RankLost handler threw: ", e.what());
  }
}

ControlServer::ControlServer(ServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

ControlServer::~ControlServer() { Stop(); }

void ControlServer::SetRankLostHandler(RankLostHandler handler) {
  impl_->SetRankLostHandler(std::move(handler));
}

void ControlServer::Start() { impl_->Start(); }
void ControlServer::Stop() { impl_->Stop(); }
uint16_t ControlServer::port() const { return impl_->port(); }
int64_t ControlServer::refused_connections() const { return impl_->refused_connections(); }
int64_t ControlServer::malformed_messages() const { return impl_->malformed_messages(); }

}  // namespace terra::comm::control
