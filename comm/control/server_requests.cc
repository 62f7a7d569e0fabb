// What the server does with each message once it is framed and decoded:
// the handshake, the store requests and the heartbeat channel. Runs on the
// I/O thread.
#include "comm/control/server_impl.h"
#include "runtime/base/check.h"
#include "runtime/base/log.h"

namespace terra::comm::control {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

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

std::string QuotedList(const std::vector<std::string>& keys) {
  std::string out;
  for (const std::string& key : keys) out += StrCat(out.empty() ? "" : ", ", "'", key, "'");
  return out;
}

}  // namespace

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
  if (c->channel == Channel::kHeartbeat && rank != kObserverRank &&
      !heartbeats_.Open(rank, c.get(), Clock::now())) {
    TERRA_LOG(kWarning, "control plane: rank ", rank,
              " reconnected its heartbeat after it was reported lost; not watching it again");
  }
  ReadHeader(c);
}

// Reading goes on while a request is parked, so a client that hangs up is
// noticed at once. Replies leave in completion order, which the protocol's
// one-request-at-a-time rule makes the request order.
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
  switch (m.type) {
    case MessageType::kHeartbeat:
      heartbeats_.Beat(c->rank, c.get(), Clock::now());
      return true;
    case MessageType::kGoodbye:
      c->goodbye = true;
      heartbeats_.Goodbye(c->rank, c.get());
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

}  // namespace terra::comm::control
