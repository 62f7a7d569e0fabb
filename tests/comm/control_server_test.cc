// The ControlServer's defences: handshake, limits and malformed input.
#include "comm/control/server.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "comm/control/client.h"
#include "runtime/base/check.h"
#include "runtime/base/status.h"
#include "tests/comm/control_test_util.h"

namespace terra::comm::control {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
using testing::ClientFor;
using testing::RawSocket;
using testing::StartServer;

// The server still answers a well-behaved client.
void ExpectServing(const ControlServer& server) {
  ControlClient client(ClientFor(server));
  client.Set("alive", "yes");
  EXPECT_EQ(client.Get("alive", milliseconds(100)), "yes");
}

TEST(ControlServerTest, WrongSecretIsRefused) {
  auto server = StartServer();
  ClientOptions options = ClientFor(*server);
  options.secret = "not-the-secret";
  try {
    ControlClient client(options);
    FAIL() << "connected with a wrong secret";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("secret"), std::string::npos) << e.what();
  }
  EXPECT_EQ(server->refused_connections(), 1);
  EXPECT_EQ(server->malformed_messages(), 0);
  ExpectServing(*server);
}

TEST(ControlServerTest, SecretPrefixAndEmptySecretAreRefused) {
  auto server = StartServer();
  for (std::string secret : {std::string(testing::kSecret).substr(0, 5), std::string(),
                             std::string(testing::kSecret) + "x"}) {
    RawSocket raw(server->port());
    ASSERT_TRUE(raw.SendHello(Channel::kStore, 0, secret));
    auto reply = raw.ReadMessage(milliseconds(2000));
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(reply->type, MessageType::kError);
    EXPECT_EQ(reply->ints[0], static_cast<int64_t>(StatusCode::kPermissionDenied));
    EXPECT_TRUE(raw.WaitForClose(milliseconds(2000)));
  }
  EXPECT_EQ(server->refused_connections(), 3);
}

TEST(ControlServerTest, ProtocolVersionMismatchIsRefused) {
  auto server = StartServer();
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.SendHello(Channel::kStore, 0, testing::kSecret, kProtocolVersion + 1));
  auto reply = raw.ReadMessage(milliseconds(2000));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->type, MessageType::kError);
  EXPECT_NE(reply->strings[0].find("protocol version mismatch"), std::string::npos)
      << reply->strings[0];
  EXPECT_TRUE(raw.WaitForClose(milliseconds(2000)));
  EXPECT_EQ(server->refused_connections(), 1);
}

TEST(ControlServerTest, FirstMessageMustBeHello) {
  auto server = StartServer();
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.SendMessage({MessageType::kSet, {"k", "v"}, {}}));
  auto reply = raw.ReadMessage(milliseconds(2000));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->type, MessageType::kError);
  EXPECT_NE(reply->strings[0].find("kHello"), std::string::npos) << reply->strings[0];
  EXPECT_TRUE(raw.WaitForClose(milliseconds(2000)));
  EXPECT_EQ(server->refused_connections(), 1);
  ExpectServing(*server);
}

TEST(ControlServerTest, GarbageIsDisconnectedAndOthersCarryOn) {
  auto server = StartServer();
  ControlClient bystander(ClientFor(*server));
  bystander.Set("before", "1");

  RawSocket garbage(server->port());
  ASSERT_TRUE(garbage.SendBytes(std::string("\x05\0\0\0\xff\xff\xff\xff\xff", 9)));
  EXPECT_TRUE(garbage.WaitForClose(milliseconds(2000)));
  EXPECT_GE(server->malformed_messages(), 1);

  EXPECT_EQ(bystander.Get("before", milliseconds(100)), "1");
  ExpectServing(*server);
}

TEST(ControlServerTest, OversizedFrameIsDisconnected) {
  ServerOptions options;
  options.max_message_bytes = 1024;
  auto server = StartServer(options);
  ControlClient bystander(ClientFor(*server));

  {  // before the handshake
    RawSocket raw(server->port());
    ASSERT_TRUE(raw.SendBytes(std::string("\xff\xff\xff\xff", 4)));
    EXPECT_TRUE(raw.WaitForClose(milliseconds(2000)));
    EXPECT_EQ(server->malformed_messages(), 1);
  }
  {  // after it: max_message_bytes applies
    RawSocket raw(server->port());
    ASSERT_TRUE(raw.SendHello(Channel::kStore, 0));
    auto ok = raw.ReadMessage(milliseconds(2000));
    ASSERT_TRUE(ok.has_value());
    EXPECT_EQ(ok->type, MessageType::kOk);
    ASSERT_TRUE(raw.SendMessage({MessageType::kSet, {"big", std::string(2000, 'x')}, {}}));
    EXPECT_TRUE(raw.WaitForClose(milliseconds(2000)));
    EXPECT_EQ(server->malformed_messages(), 2);
  }
  bystander.Set("small", "fine");
  EXPECT_EQ(bystander.Get("small", milliseconds(100)), "fine");
}

TEST(ControlServerTest, ReplyTypeAsRequestIsDisconnected) {
  auto server = StartServer();
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.SendHello(Channel::kStore, 0));
  ASSERT_TRUE(raw.ReadMessage(milliseconds(2000)).has_value());
  ASSERT_TRUE(raw.SendMessage({MessageType::kInteger, {}, {7}}));
  auto reply = raw.ReadMessage(milliseconds(2000));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->type, MessageType::kError);
  EXPECT_TRUE(raw.WaitForClose(milliseconds(2000)));
  EXPECT_EQ(server->malformed_messages(), 1);
}

TEST(ControlServerTest, SilentConnectionIsClosedAfterHandshakeTimeout) {
  ServerOptions options;
  options.handshake_timeout = milliseconds(200);
  auto server = StartServer(options);
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.connected());
  auto start = Clock::now();
  EXPECT_TRUE(raw.WaitForClose(milliseconds(3000)));
  auto waited = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  EXPECT_GE(waited, milliseconds(150));
  EXPECT_LT(waited, milliseconds(2000));
  EXPECT_EQ(server->refused_connections(), 1);
  ExpectServing(*server);
}

TEST(ControlServerTest, BindingATakenPortThrows) {
  auto first = StartServer();
  ServerOptions options;
  options.bind_address = "127.0.0.1";
  options.port = first->port();
  options.secret = "s";
  ControlServer second(options);
  try {
    second.Start();
    FAIL() << "bound a port that is in use";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot bind"), std::string::npos) << e.what();
  }
}

TEST(ControlServerTest, StopClosesConnectionsAndIsIdempotent) {
  auto server = StartServer();
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.SendHello(Channel::kStore, 0));
  ASSERT_TRUE(raw.ReadMessage(milliseconds(2000)).has_value());
  ASSERT_TRUE(raw.SendMessage({MessageType::kGet, {"never"}, {60000}}));  // parked
  server->Stop();
  EXPECT_TRUE(raw.WaitForClose(milliseconds(2000)));
  server->Stop();
}

}  // namespace
}  // namespace terra::comm::control
