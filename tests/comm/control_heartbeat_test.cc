// Heartbeats: which endings of a rank's heartbeat channel are reported lost.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "comm/control/client.h"
#include "comm/control/heartbeat_monitor.h"
#include "comm/control/server.h"
#include "tests/comm/control_test_util.h"

namespace terra::comm::control {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
using testing::ClientFor;
using testing::RawSocket;

constexpr milliseconds kInterval{30};

TEST(HeartbeatMonitorTest, SilenceIsReportedOnceAfterTheTimeout) {
  HeartbeatMonitor monitor(milliseconds(100));
  int channel = 0;
  auto t0 = Clock::time_point();
  ASSERT_TRUE(monitor.Open(5, &channel, t0));
  monitor.Beat(5, &channel, t0 + milliseconds(80));
  EXPECT_TRUE(monitor.Expired(t0 + milliseconds(180)).empty());
  std::vector<RankLostEvent> events = monitor.Expired(t0 + milliseconds(181));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].rank, 5);
  EXPECT_EQ(events[0].reason, RankLostReason::kHeartbeatTimeout);
  EXPECT_EQ(events[0].silent_for, milliseconds(101));
  EXPECT_TRUE(monitor.Expired(t0 + milliseconds(500)).empty());
  EXPECT_FALSE(monitor.Closed(5, &channel, t0 + milliseconds(500)));
  EXPECT_FALSE(monitor.Open(5, &channel, t0 + milliseconds(600)));  // never watched again
  EXPECT_EQ(monitor.watched(), 0u);
}

TEST(HeartbeatMonitorTest, OnlyTheCurrentChannelCounts) {
  HeartbeatMonitor monitor(milliseconds(100));
  int old_channel = 0;
  int new_channel = 0;
  auto t0 = Clock::time_point();
  monitor.Open(1, &old_channel, t0);
  monitor.Open(1, &new_channel, t0 + milliseconds(50));
  monitor.Beat(1, &old_channel, t0 + milliseconds(140));  // stale: ignored
  EXPECT_FALSE(monitor.Closed(1, &old_channel, t0 + milliseconds(140)));
  auto event = monitor.Closed(1, &new_channel, t0 + milliseconds(140));
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->reason, RankLostReason::kConnectionClosed);
  EXPECT_EQ(event->silent_for, milliseconds(90));
}

TEST(HeartbeatMonitorTest, GoodbyeEndsWatchingQuietly) {
  HeartbeatMonitor monitor(milliseconds(100));
  int channel = 0;
  auto t0 = Clock::time_point();
  monitor.Open(2, &channel, t0);
  monitor.Goodbye(2, &channel);
  EXPECT_FALSE(monitor.Closed(2, &channel, t0 + milliseconds(10)));
  EXPECT_TRUE(monitor.Expired(t0 + milliseconds(1000)).empty());
  EXPECT_TRUE(monitor.Open(2, &channel, t0 + milliseconds(1000)));  // a clean restart
}

// A server whose RankLost events are collected for the test to wait on.
class HeartbeatTest : public ::testing::Test {
 protected:
  void StartWithTimeout(milliseconds heartbeat_timeout) {
    ServerOptions options;
    options.bind_address = "127.0.0.1";
    options.secret = testing::kSecret;
    options.heartbeat_timeout = heartbeat_timeout;
    server_ = std::make_unique<ControlServer>(options);
    server_->SetRankLostHandler([this](const RankLostEvent& event) {
      std::lock_guard lock(mutex_);
      events_.push_back(event);
      cv_.notify_all();
    });
    server_->Start();
  }

  // Waits until at least n events arrived; returns a copy of them all.
  std::vector<RankLostEvent> WaitForEvents(size_t n, milliseconds timeout) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, timeout, [&] { return events_.size() >= n; });
    return events_;
  }

  std::vector<RankLostEvent> Events() {
    std::lock_guard lock(mutex_);
    return events_;
  }

  std::unique_ptr<ControlServer> server_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<RankLostEvent> events_;
};

TEST_F(HeartbeatTest, CleanExitIsNotALostRank) {
  StartWithTimeout(milliseconds(300));
  {
    Heartbeat heartbeat(ClientFor(*server_, 0), kInterval);
    std::this_thread::sleep_for(milliseconds(450));  // longer than the timeout: beats count
  }
  std::this_thread::sleep_for(milliseconds(400));  // past the timeout again
  EXPECT_TRUE(Events().empty());
}

TEST_F(HeartbeatTest, SilentRankIsReportedOnceAfterTheTimeout) {
  StartWithTimeout(milliseconds(300));
  auto heartbeat = std::make_unique<Heartbeat>(ClientFor(*server_, 1), kInterval);
  std::this_thread::sleep_for(milliseconds(100));
  auto stopped = Clock::now();
  heartbeat->StopSilently();
  std::vector<RankLostEvent> events = WaitForEvents(1, milliseconds(3000));
  auto detected = std::chrono::duration_cast<milliseconds>(Clock::now() - stopped);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].rank, 1);
  EXPECT_EQ(events[0].reason, RankLostReason::kHeartbeatTimeout);
  EXPECT_GE(events[0].silent_for, milliseconds(300));  // truncated to ms
  EXPECT_GE(detected, milliseconds(250));
  EXPECT_LT(detected, milliseconds(1000));

  heartbeat.reset();  // the connection now closes: still no second report
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_EQ(Events().size(), 1u);
}

TEST_F(HeartbeatTest, AbruptCloseIsReportedAtOnce) {
  StartWithTimeout(milliseconds(10000));
  RawSocket raw(server_->port());
  ASSERT_TRUE(raw.SendHello(Channel::kHeartbeat, 2));
  auto ok = raw.ReadMessage(milliseconds(2000));
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->type, MessageType::kOk);
  ASSERT_TRUE(raw.SendMessage({MessageType::kHeartbeat, {}, {}}));
  auto closed = Clock::now();
  raw.Close();
  std::vector<RankLostEvent> events = WaitForEvents(1, milliseconds(3000));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].rank, 2);
  EXPECT_EQ(events[0].reason, RankLostReason::kConnectionClosed);
  EXPECT_LT(Clock::now() - closed, milliseconds(1000));
  EXPECT_STREQ(RankLostReasonName(events[0].reason), "connection closed");
}

TEST_F(HeartbeatTest, GoodbyeThenCloseIsClean) {
  StartWithTimeout(milliseconds(10000));
  RawSocket raw(server_->port());
  ASSERT_TRUE(raw.SendHello(Channel::kHeartbeat, 3));
  ASSERT_TRUE(raw.ReadMessage(milliseconds(2000)).has_value());
  ASSERT_TRUE(raw.SendMessage({MessageType::kGoodbye, {}, {}}));
  raw.Close();
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_TRUE(Events().empty());
}

TEST_F(HeartbeatTest, ObserversAndStoreConnectionsAreNotWatched) {
  StartWithTimeout(milliseconds(100));
  {
    RawSocket observer(server_->port());
    ASSERT_TRUE(observer.SendHello(Channel::kHeartbeat, kObserverRank));
    ASSERT_TRUE(observer.ReadMessage(milliseconds(2000)).has_value());
    ControlClient store_client(ClientFor(*server_, 4));  // a rank's store channel
    std::this_thread::sleep_for(milliseconds(300));
  }
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_TRUE(Events().empty());
}

TEST_F(HeartbeatTest, SeveralRanksAreReportedSeparately) {
  StartWithTimeout(milliseconds(200));
  Heartbeat alive(ClientFor(*server_, 0), kInterval);
  Heartbeat silent(ClientFor(*server_, 1), kInterval);
  RawSocket crashing(server_->port());
  ASSERT_TRUE(crashing.SendHello(Channel::kHeartbeat, 2));
  ASSERT_TRUE(crashing.ReadMessage(milliseconds(2000)).has_value());
  silent.StopSilently();
  crashing.Close();
  std::vector<RankLostEvent> events = WaitForEvents(2, milliseconds(3000));
  std::this_thread::sleep_for(milliseconds(300));  // rank 0 keeps beating: no event
  events = Events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].rank, 2);
  EXPECT_EQ(events[0].reason, RankLostReason::kConnectionClosed);
  EXPECT_EQ(events[1].rank, 1);
  EXPECT_EQ(events[1].reason, RankLostReason::kHeartbeatTimeout);
}

TEST_F(HeartbeatTest, ServerGoingAwayDoesNotKillTheRank) {
  // Beating into a closed connection must fail quietly, never raise SIGPIPE.
  StartWithTimeout(milliseconds(10000));
  Heartbeat heartbeat(ClientFor(*server_, 0), milliseconds(5));
  server_->Stop();
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_TRUE(Events().empty());  // Stop reports nobody
}

}  // namespace
}  // namespace terra::comm::control
