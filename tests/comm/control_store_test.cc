// The rendezvous store: the Store data structure alone, then through
// ControlClient against a live ControlServer on loopback.
#include "comm/control/store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "comm/control/client.h"
#include "comm/control/server.h"
#include "runtime/base/check.h"
#include "tests/comm/control_test_util.h"

namespace terra::comm::control {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
using testing::ClientFor;
using testing::StartServer;

milliseconds Since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

TEST(StoreTest, ParkedRequestWakesWhenAllKeysExist) {
  Store store;
  int woken = 0;
  Store::ParkId id = store.Park({"a", "b"}, [&] { ++woken; });
  store.Set("a", "1");
  EXPECT_EQ(woken, 0);
  store.Set("b", "2");
  EXPECT_EQ(woken, 1);
  EXPECT_EQ(store.parked(), 0u);
  store.Cancel(id);  // already woken: a no-op
  store.Set("b", "3");
  EXPECT_EQ(woken, 1);
}

TEST(StoreTest, CancelledRequestNeverWakes) {
  Store store;
  bool woken = false;
  store.Cancel(store.Park({"k"}, [&] { woken = true; }));
  store.Set("k", "v");
  EXPECT_FALSE(woken);
}

TEST(StoreTest, AddParsesStrictly) {
  Store store;
  std::string error;
  EXPECT_EQ(store.Add("n", 5, &error), 5);
  EXPECT_EQ(store.Add("n", -7, &error), -2);
  EXPECT_EQ(*store.Find("n"), "-2");
  for (const char* bad : {"", "12x", " 3", "abc", "99999999999999999999"}) {
    store.Set("bad", bad);
    EXPECT_FALSE(store.Add("bad", 1, &error)) << bad;
    EXPECT_EQ(*store.Find("bad"), bad);
  }
  store.Set("max", std::to_string(INT64_MAX));
  EXPECT_FALSE(store.Add("max", 1, &error));
  EXPECT_NE(error.find("overflow"), std::string::npos) << error;
}

TEST(ControlStoreTest, SetGetAddCheck) {
  auto server = StartServer();
  ControlClient client(ClientFor(*server));
  client.Set("k", "v");
  EXPECT_EQ(client.Get("k", milliseconds(100)), "v");
  client.Set("k", std::string("bin\0ary", 7));
  EXPECT_EQ(client.Get("k", milliseconds(100)), std::string("bin\0ary", 7));
  client.Set("empty", "");
  EXPECT_EQ(client.Get("empty", milliseconds(100)), "");

  EXPECT_EQ(client.Add("n", 1), 1);
  EXPECT_EQ(client.Add("n", 41), 42);
  EXPECT_EQ(client.Add("n", 0), 42);
  EXPECT_EQ(client.Get("n", milliseconds(100)), "42");

  EXPECT_TRUE(client.Check({"k", "n"}));
  EXPECT_FALSE(client.Check({"k", "missing"}));
  EXPECT_EQ(client.options().port, server->port());
}

TEST(ControlStoreTest, AddOnTextIsAnInvalidArgument) {
  auto server = StartServer();
  ControlClient client(ClientFor(*server));
  client.Set("text", "hello");
  try {
    client.Add("text", 1);
    FAIL() << "Add on a non-integer value succeeded";
  } catch (const TimeoutError&) {
    FAIL() << "wrong exception type";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a decimal integer"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(client.Add("other", 2), 2);  // the connection is still usable
}

TEST(ControlStoreTest, GetBlocksUntilAnotherClientSets) {
  auto server = StartServer();
  ControlClient reader(ClientFor(*server));
  auto start = Clock::now();
  std::thread writer([&] {
    ControlClient client(ClientFor(*server));
    std::this_thread::sleep_for(milliseconds(150));
    client.Set("late", "here");
  });
  EXPECT_EQ(reader.Get("late", milliseconds(3000)), "here");
  EXPECT_GE(Since(start), milliseconds(140));
  writer.join();
}

TEST(ControlStoreTest, WaitBlocksUntilEveryKeyExists) {
  auto server = StartServer();
  ControlClient waiter(ClientFor(*server));
  ControlClient writer(ClientFor(*server));
  writer.Set("a", "1");
  waiter.Wait({"a"}, milliseconds(100));  // already there: returns at once
  std::thread setter([&] {
    std::this_thread::sleep_for(milliseconds(50));
    writer.Set("b", "2");
    std::this_thread::sleep_for(milliseconds(50));
    writer.Add("c", 3);
  });
  auto start = Clock::now();
  waiter.Wait({"a", "b", "c"}, milliseconds(3000));
  EXPECT_GE(Since(start), milliseconds(90));
  setter.join();
}

TEST(ControlStoreTest, GetTimesOutNamingTheKey) {
  auto server = StartServer();
  ControlClient client(ClientFor(*server));
  auto start = Clock::now();
  try {
    client.Get("never/set", milliseconds(200));
    FAIL() << "Get of a missing key returned";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("never/set"), std::string::npos) << e.what();
  }
  EXPECT_GE(Since(start), milliseconds(190));
  EXPECT_LT(Since(start), milliseconds(2000));
  client.Set("after", "ok");  // a server-side timeout leaves the connection usable
  EXPECT_EQ(client.Get("after", milliseconds(100)), "ok");
}

TEST(ControlStoreTest, WaitTimesOutNamingTheMissingKeys) {
  auto server = StartServer();
  ControlClient client(ClientFor(*server));
  client.Set("present", "1");
  try {
    client.Wait({"present", "absent"}, milliseconds(100));
    FAIL() << "Wait returned";
  } catch (const TimeoutError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("missing: 'absent'"), std::string::npos) << what;
  }
  EXPECT_THROW(client.Get("zero", milliseconds(0)), TimeoutError);
}

TEST(ControlStoreTest, ConcurrentAddsAreAtomic) {
  auto server = StartServer();
  constexpr int kThreads = 4;
  constexpr int kAdds = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      ControlClient client(ClientFor(*server));
      for (int i = 0; i < kAdds; ++i) client.Add("counter", 1);
    });
  }
  for (auto& thread : threads) thread.join();
  ControlClient client(ClientFor(*server));
  EXPECT_EQ(client.Add("counter", 0), kThreads * kAdds);
}

TEST(ControlStoreTest, BarrierHoldsEveryoneUntilAllArriveTwice) {
  auto server = StartServer();
  constexpr int kWorld = 4;
  std::atomic<int> arrived{0};
  std::atomic<int> early{0};
  std::vector<std::thread> threads;
  for (int rank = 0; rank < kWorld; ++rank) {
    threads.emplace_back([&, rank] {
      ControlClient client(ClientFor(*server, rank));
      for (int round = 1; round <= 2; ++round) {
        std::this_thread::sleep_for(milliseconds(10 * rank));  // stagger arrivals
        ++arrived;
        client.Barrier("step", kWorld, milliseconds(4000));
        if (arrived.load() < kWorld * round) ++early;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(arrived.load(), 2 * kWorld);
  EXPECT_EQ(early.load(), 0);
}

TEST(ControlStoreTest, BarrierTimeoutSaysHowManyArrived) {
  auto server = StartServer();
  ControlClient client(ClientFor(*server, 0));
  try {
    client.Barrier("lonely", 3, milliseconds(150));
    FAIL() << "Barrier returned";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("1 of 3"), std::string::npos) << e.what();
  }
}

TEST(ControlStoreTest, ClientRetriesUntilTheServerStarts) {
  uint16_t port = testing::UnusedPort();
  ClientOptions options;
  options.port = port;
  options.secret = testing::kSecret;
  options.connect_timeout = milliseconds(4000);
  std::string value;
  std::thread client_thread([&] {
    ControlClient client(options);
    value = client.Get("k", milliseconds(2000));
  });
  std::this_thread::sleep_for(milliseconds(200));
  ServerOptions server_options;
  server_options.bind_address = "127.0.0.1";
  server_options.port = port;
  server_options.secret = testing::kSecret;
  ControlServer server(server_options);
  server.Start();
  ControlClient setter(testing::ClientFor(server));
  setter.Set("k", "v");
  client_thread.join();
  EXPECT_EQ(value, "v");
}

TEST(ControlStoreTest, ConnectingToNothingTimesOutClearly) {
  ClientOptions options;
  options.port = testing::UnusedPort();
  options.secret = testing::kSecret;
  options.connect_timeout = milliseconds(300);
  auto start = Clock::now();
  try {
    ControlClient client(options);
    FAIL() << "connected to a port with no server";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("could not reach the Terra control plane at 127.0.0.1:" +
                        std::to_string(options.port)),
              std::string::npos)
        << what;
    EXPECT_NE(what.find("0.3s"), std::string::npos) << what;
  }
  EXPECT_GE(Since(start), milliseconds(200));
  EXPECT_LT(Since(start), milliseconds(2000));
}

TEST(ControlStoreTest, StoppedServerMakesCallsThrow) {
  auto server = StartServer();
  ControlClient client(ClientFor(*server));
  client.Set("k", "v");
  server->Stop();
  server->Stop();  // idempotent
  EXPECT_THROW(client.Get("k", milliseconds(100)), Error);
  EXPECT_THROW(client.Set("k", "v"), Error);  // the broken connection stays broken
}

}  // namespace
}  // namespace terra::comm::control
