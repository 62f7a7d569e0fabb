#include "comm/control/server.h"

#include "comm/control/server_impl.h"
#include "runtime/base/check.h"
#include "runtime/base/log.h"

namespace terra::comm::control {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Before the handshake a peer is a stranger: its frames may not make us
// allocate more than this, whatever max_message_bytes allows afterwards.
constexpr uint32_t kMaxHelloBytes = 64u << 10;

}  // namespace

const char* RankLostReasonName(RankLostReason reason) {
  switch (reason) {
    case RankLostReason::kConnectionClosed: return "connection closed";
    case RankLostReason::kHeartbeatTimeout: return "heartbeat timeout";
  }
  return "unknown";
}

void ControlServer::Impl::Start() {
  std::lock_guard lock(lifecycle_mutex_);
  TERRA_CHECK(!started_ && !stopped_,
              "ControlServer::Start called twice or after Stop; create a new server instead");
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
  if (auto event = heartbeats_.Closed(c->rank, c.get(), Clock::now())) ReportLost(*event);
}

void ControlServer::Impl::CheckHeartbeats() {
  for (const RankLostEvent& event : heartbeats_.Expired(Clock::now())) ReportLost(event);
  heartbeat_check_.expires_after(CheckPeriod());
  heartbeat_check_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) CheckHeartbeats();
  });
}

void ControlServer::Impl::ReportLost(const RankLostEvent& event) {
  TERRA_LOG(kWarning, "control plane: rank ", event.rank, " lost (",
            RankLostReasonName(event.reason), ", silent for ", event.silent_for.count(), " ms)");
  RankLostHandler handler;
  {
    std::lock_guard lock(handler_mutex_);
    handler = handler_;
  }
  if (!handler) return;
  try {
    handler(event);
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
