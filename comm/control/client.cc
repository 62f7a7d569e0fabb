#include "comm/control/client.h"

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include <boost/asio.hpp>

#include "runtime/base/check.h"
#include "runtime/base/log.h"
#include "runtime/base/status.h"

namespace terra::comm::control {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using ErrorCode = boost::system::error_code;

constexpr milliseconds kConnectRetryInterval{50};
// Added to a Get or Wait's own timeout for the round trip: the server answers
// kError(timeout) at the timeout, so the client's deadline is a backstop.
constexpr milliseconds kRoundTripMargin{5000};
// Longest wait the server grants; longer timeouts are clamped to it.
constexpr milliseconds kMaxWait = std::chrono::hours(24 * 30);
// Bound on sending kGoodbye from a destructor.
constexpr milliseconds kGoodbyeTimeout{2000};

std::string Seconds(milliseconds duration) {
  std::ostringstream out;
  out << static_cast<double>(duration.count()) / 1000.0 << "s";
  return out.str();
}

// One connection to the ControlServer, handshake done. Every operation is
// bounded by a deadline: it runs the private io_context until the operation
// completes or the deadline passes. After a timeout or an I/O error the
// connection is broken and every later call throws. Not thread-safe: the
// owner serializes calls.
class Connection {
 public:
  // Connects, retrying until options.connect_timeout, then handshakes. Throws.
  Connection(const ClientOptions& options, Channel channel)
      : options_(options), socket_(io_), resolver_(io_) {
    Connect();
    Message hello{MessageType::kHello,
                  {options_.secret},
                  {kProtocolVersion, options_.rank, static_cast<int64_t>(channel)}};
    Message reply = Request(hello, Clock::now() + options_.request_timeout, "handshake");
    if (reply.type == MessageType::kError) {
      Break("refused");
      throw Error(StrCat("the Terra control plane at ", Where(),
                         " refused this connection: ", reply.strings[0]));
    }
    Expect(reply, MessageType::kOk, "handshake");
  }

  void Send(const Message& message, Clock::time_point deadline, const char* what) {
    CheckUsable();
    std::string frame = EncodeFrame(message);
    ErrorCode ec = Run(deadline, [&](auto done) {
      asio::async_write(socket_, asio::buffer(frame),
                        [done](const ErrorCode& e, size_t) { done(e); });
    });
    if (ec) Fail(ec, what);
  }

  Message Receive(Clock::time_point deadline, const char* what) {
    CheckUsable();
    unsigned char header[4];
    ErrorCode ec = Run(deadline, [&](auto done) {
      asio::async_read(socket_, asio::buffer(header),
                       [done](const ErrorCode& e, size_t) { done(e); });
    });
    if (ec) Fail(ec, what);
    uint32_t length = DecodeLength(header);
    if (length > options_.max_message_bytes) {
      Break("oversized reply");
      throw Error(StrCat(what, ": the control plane at ", Where(), " sent a reply of ", length,
                         " bytes, above max_message_bytes (", options_.max_message_bytes, ")"));
    }
    std::string payload(length, '\0');
    ec = Run(deadline, [&](auto done) {
      asio::async_read(socket_, asio::buffer(payload),
                       [done](const ErrorCode& e, size_t) { done(e); });
    });
    if (ec) Fail(ec, what);
    std::string error;
    std::optional<Message> message = DecodePayload(payload, &error);
    if (!message) {
      Break("malformed reply");
      throw Error(StrCat(what, ": malformed reply from the control plane at ", Where(), ": ",
                         error));
    }
    return std::move(*message);
  }

  Message Request(const Message& request, Clock::time_point deadline, const char* what) {
    Send(request, deadline, what);
    return Receive(deadline, what);
  }

  // A reply other than the expected type or kError is a protocol bug.
  void Expect(const Message& reply, MessageType type, const char* what) {
    if (reply.type == type) return;
    Break("unexpected reply");
    throw Error(StrCat(what, ": expected ", MessageTypeName(type),
                       " from the control plane at ", Where(), ", got ",
                       MessageTypeName(reply.type)));
  }

  // Closes without a word (no kGoodbye).
  void Close() { Break("closed"); }

  std::string Where() const { return StrCat(options_.host, ":", options_.port); }

 private:
  void Connect() {
    Clock::time_point deadline = Clock::now() + options_.connect_timeout;
    for (;;) {
      ErrorCode ec = TryConnect(deadline);
      if (!ec) return;
      if (Clock::now() + kConnectRetryInterval >= deadline) {
        throw TimeoutError(StrCat("could not reach the Terra control plane at ", Where(),
                                  " within ", Seconds(options_.connect_timeout), ": ",
                                  ec.message(),
                                  "; check MASTER_ADDR and MASTER_PORT and that the launcher "
                                  "is running"));
      }
      std::this_thread::sleep_for(kConnectRetryInterval);
    }
  }

  ErrorCode TryConnect(Clock::time_point deadline) {
    tcp::resolver::results_type endpoints;
    ErrorCode ec = Run(deadline, [&](auto done) {
      resolver_.async_resolve(options_.host, std::to_string(options_.port),
                              [&endpoints, done](const ErrorCode& e,
                                                 tcp::resolver::results_type results) {
                                endpoints = std::move(results);
                                done(e);
                              });
    });
    if (ec) return ec;
    ec = Run(deadline, [&](auto done) {
      asio::async_connect(socket_, endpoints,
                          [done](const ErrorCode& e, const tcp::endpoint&) { done(e); });
    });
    if (ec) return ec;
    socket_.set_option(tcp::no_delay(true), ec);
    return {};
  }

  // Starts one asynchronous operation (start receives its completion
  // callback) and runs the io_context until it completes or the deadline
  // passes; then cancels it and returns asio::error::timed_out.
  template <typename Start>
  ErrorCode Run(Clock::time_point deadline, Start&& start) {
    std::optional<ErrorCode> result;
    std::function<void(const ErrorCode&)> done = [&result](const ErrorCode& e) { result = e; };
    start(done);
    io_.restart();
    while (!result && io_.run_one_until(deadline) > 0) {
    }
    if (result) return *result;
    ErrorCode ignored;
    resolver_.cancel();
    socket_.close(ignored);
    io_.restart();
    io_.run();  // completes the cancelled operation
    return asio::error::timed_out;
  }

  void CheckUsable() const {
    if (broken_.empty()) return;
    throw Error(StrCat("the connection to the Terra control plane at ", Where(),
                       " is unusable (", broken_, "); create a new client"));
  }

  [[noreturn]] void Fail(const ErrorCode& ec, const char* what) {
    if (ec == asio::error::timed_out) {
      Break(StrCat(what, " timed out"));
      throw TimeoutError(StrCat(what, ": no answer from the Terra control plane at ", Where(),
                                " before the deadline"));
    }
    Break(ec.message());
    if (ec == asio::error::eof || ec == asio::error::connection_reset) {
      throw Error(StrCat(what, ": the Terra control plane at ", Where(),
                         " closed the connection (has the launcher stopped?)"));
    }
    throw Error(StrCat(what, ": lost the connection to the Terra control plane at ", Where(),
                       ": ", ec.message()));
  }

  void Break(std::string why) {
    if (broken_.empty()) broken_ = std::move(why);
    ErrorCode ignored;
    socket_.close(ignored);
  }

  const ClientOptions options_;
  asio::io_context io_;
  tcp::socket socket_;
  tcp::resolver resolver_;
  std::string broken_;  // why the connection is unusable; empty while it works
};

// Throws the exception matching the server's kError reply.
[[noreturn]] void ThrowServerError(const Message& reply) {
  int64_t raw = reply.ints[0];
  bool known = raw > static_cast<int64_t>(StatusCode::kOk) &&
               raw <= static_cast<int64_t>(StatusCode::kAborted);
  Status(known ? static_cast<StatusCode>(raw) : StatusCode::kUnavailable, reply.strings[0])
      .ThrowIfError();
  throw Error(reply.strings[0]);  // unreachable: the status is not ok
}

milliseconds ClampWait(milliseconds timeout) {
  return std::clamp(timeout, milliseconds(0), kMaxWait);
}

}  // namespace

class ControlClient::Impl {
 public:
  explicit Impl(ClientOptions options)
      : options_(std::move(options)), connection_(options_, Channel::kStore) {}

  // Sends one request and returns the reply of the expected type; a kError
  // reply becomes its exception.
  Message Call(const Message& request, MessageType expected, milliseconds budget) {
    std::lock_guard lock(mutex_);
    const char* what = MessageTypeName(request.type);
    Message reply = connection_.Request(request, Clock::now() + budget, what);
    if (reply.type == MessageType::kError) ThrowServerError(reply);
    connection_.Expect(reply, expected, what);
    return reply;
  }

  milliseconds WaitBudget(milliseconds timeout) const {
    return ClampWait(timeout) + std::min(options_.request_timeout, kRoundTripMargin);
  }

  int64_t NextGeneration(const std::string& name) {
    std::lock_guard lock(mutex_);
    return generations_[name]++;
  }

  const ClientOptions options_;

 private:
  std::mutex mutex_;
  Connection connection_;
  std::map<std::string, int64_t> generations_;
};

ControlClient::ControlClient(ClientOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

ControlClient::~ControlClient() = default;

void ControlClient::Set(const std::string& key, const std::string& value) {
  impl_->Call(Message{MessageType::kSet, {key, value}, {}}, MessageType::kOk,
              impl_->options_.request_timeout);
}

std::string ControlClient::Get(const std::string& key, milliseconds timeout) {
  Message reply = impl_->Call(Message{MessageType::kGet, {key}, {ClampWait(timeout).count()}},
                              MessageType::kValue, impl_->WaitBudget(timeout));
  return std::move(reply.strings[0]);
}

void ControlClient::Wait(const std::vector<std::string>& keys, milliseconds timeout) {
  TERRA_CHECK(!keys.empty(), "ControlClient::Wait needs at least one key");
  impl_->Call(Message{MessageType::kWait, keys, {ClampWait(timeout).count()}}, MessageType::kOk,
              impl_->WaitBudget(timeout));
}

int64_t ControlClient::Add(const std::string& key, int64_t delta) {
  Message reply = impl_->Call(Message{MessageType::kAdd, {key}, {delta}}, MessageType::kInteger,
                              impl_->options_.request_timeout);
  return reply.ints[0];
}

bool ControlClient::Check(const std::vector<std::string>& keys) {
  TERRA_CHECK(!keys.empty(), "ControlClient::Check needs at least one key");
  Message reply = impl_->Call(Message{MessageType::kCheck, keys, {}}, MessageType::kInteger,
                              impl_->options_.request_timeout);
  return reply.ints[0] != 0;
}

void ControlClient::Barrier(const std::string& name, int64_t world_size, milliseconds timeout) {
  TERRA_CHECK(world_size > 0, "Barrier '", name, "' needs a positive world_size, got ",
              world_size);
  Clock::time_point deadline = Clock::now() + ClampWait(timeout);
  std::string prefix = StrCat("barrier/", name, "/", impl_->NextGeneration(name), "/");
  int64_t arrived = Add(prefix + "count", 1);
  TERRA_CHECK(arrived <= world_size, "Barrier '", name, "': ", arrived,
              " participants arrived but world_size is ", world_size,
              "; every participant must pass the same world_size");
  if (arrived == world_size) Set(prefix + "done", "1");
  auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
  try {
    Get(prefix + "done", std::max(left, milliseconds(0)));
  } catch (const TimeoutError&) {
    int64_t now_arrived = Add(prefix + "count", 0);
    throw TimeoutError(StrCat("Barrier '", name, "' timed out after ", timeout.count(),
                              " ms: ", now_arrived, " of ", world_size,
                              " participants arrived; the others may have crashed or hung"));
  }
}

const ClientOptions& ControlClient::options() const { return impl_->options_; }

class Heartbeat::Impl {
 public:
  Impl(ClientOptions options, milliseconds interval)
      : options_(std::move(options)),
        interval_(interval),
        connection_(options_, Channel::kHeartbeat) {
    TERRA_CHECK(interval > milliseconds(0), "the heartbeat interval must be positive");
    thread_ = std::thread([this] { Beat(); });
  }

  ~Impl() {
    StopThread();
    if (!silent_ && !failed_) {
      try {
        connection_.Send(Message{MessageType::kGoodbye, {}, {}},
                         Clock::now() + std::min(options_.request_timeout, kGoodbyeTimeout),
                         "kGoodbye");
      } catch (const Error& e) {
        TERRA_LOG(kWarning, "heartbeat: could not say goodbye: ", e.what());
      }
    }
    connection_.Close();
  }

  void StopSilently() {
    StopThread();
    silent_ = true;
  }

 private:
  // The beating thread: one kHeartbeat every interval until stopped or a send fails.
  void Beat() {
    std::unique_lock lock(mutex_);
    while (!cv_.wait_for(lock, interval_, [this] { return stop_; })) {
      lock.unlock();
      try {
        connection_.Send(Message{MessageType::kHeartbeat, {}, {}},
                         Clock::now() + options_.request_timeout, "kHeartbeat");
      } catch (const Error& e) {
        TERRA_LOG(kError, "heartbeat of rank ", options_.rank, " stopped: ", e.what());
        lock.lock();
        failed_ = true;
        return;
      }
      lock.lock();
    }
  }

  void StopThread() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  const ClientOptions options_;
  const milliseconds interval_;
  Connection connection_;  // used by the beating thread until it is joined
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool failed_ = false;
  bool silent_ = false;
  std::thread thread_;
};

Heartbeat::Heartbeat(ClientOptions options, milliseconds interval)
    : impl_(std::make_unique<Impl>(std::move(options), interval)) {}

Heartbeat::~Heartbeat() = default;

void Heartbeat::StopSilently() { impl_->StopSilently(); }

}  // namespace terra::comm::control
