// Helpers shared by the control-plane tests: a server on an ephemeral port,
// client options pointing at it, and a raw POSIX socket for speaking (or
// misspeaking) the protocol by hand.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "comm/control/client.h"
#include "comm/control/protocol.h"
#include "comm/control/server.h"

namespace terra::comm::control::testing {

inline constexpr char kSecret[] = "test-secret-0123456789";

inline std::unique_ptr<ControlServer> StartServer(ServerOptions options = {}) {
  options.bind_address = "127.0.0.1";
  options.port = 0;
  if (options.secret.empty()) options.secret = kSecret;
  auto server = std::make_unique<ControlServer>(std::move(options));
  server->Start();
  return server;
}

inline ClientOptions ClientFor(const ControlServer& server, int64_t rank = kObserverRank) {
  ClientOptions options;
  options.host = "127.0.0.1";
  options.port = server.port();
  options.secret = kSecret;
  options.rank = rank;
  options.connect_timeout = std::chrono::milliseconds(2000);
  options.request_timeout = std::chrono::milliseconds(2000);
  return options;
}

// A blocking TCP socket to 127.0.0.1:port; reads are bounded by poll().
class RawSocket {
 public:
  explicit RawSocket(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawSocket() { Close(); }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  bool connected() const { return connected_; }

  bool SendBytes(const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }

  bool SendMessage(const Message& message) { return SendBytes(EncodeFrame(message)); }

  bool SendHello(Channel channel, int64_t rank, const std::string& secret = kSecret,
                 int64_t version = kProtocolVersion) {
    return SendMessage(Message{MessageType::kHello, {secret},
                               {version, rank, static_cast<int64_t>(channel)}});
  }

  // Up to n bytes; empty on EOF, error or timeout (timed_out tells which).
  std::string ReadSome(size_t n, std::chrono::milliseconds timeout, bool* timed_out = nullptr) {
    if (timed_out != nullptr) *timed_out = false;
    pollfd pfd{fd_, POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(timeout.count())) <= 0) {
      if (timed_out != nullptr) *timed_out = true;
      return {};
    }
    std::string buffer(n, '\0');
    ssize_t got = ::recv(fd_, buffer.data(), n, 0);
    buffer.resize(got > 0 ? static_cast<size_t>(got) : 0);
    return buffer;
  }

  // One whole message, or nullopt on EOF, error, timeout or garbage.
  std::optional<Message> ReadMessage(std::chrono::milliseconds timeout) {
    std::string header = ReadExactly(4, timeout);
    if (header.size() != 4) return std::nullopt;
    uint32_t length = DecodeLength(reinterpret_cast<const unsigned char*>(header.data()));
    std::string payload = ReadExactly(length, timeout);
    if (payload.size() != length) return std::nullopt;
    std::string error;
    return DecodePayload(payload, &error);
  }

  // True once the peer has closed: reads drain until EOF or a reset.
  bool WaitForClose(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      bool timed_out = false;
      std::string got = ReadSome(4096, std::chrono::milliseconds(50), &timed_out);
      if (!timed_out && got.empty()) return true;
    }
    return false;
  }

  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  std::string ReadExactly(size_t n, std::chrono::milliseconds timeout) {
    std::string out;
    while (out.size() < n) {
      std::string got = ReadSome(n - out.size(), timeout);
      if (got.empty()) break;
      out += got;
    }
    return out;
  }

  int fd_ = -1;
  bool connected_ = false;
};

// A port with nothing listening on it (bound and released; good enough on loopback).
inline uint16_t UnusedPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace terra::comm::control::testing
