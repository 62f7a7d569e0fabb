// HeartbeatMonitor: the ranks whose heartbeat channels are open, when each
// was last heard from, and which have been reported lost. It does no I/O and
// reads no clock: ControlServer feeds it what happens and the time.
//
// Each rank is reported at most once in the monitor's life; a channel is
// identified by an opaque pointer so that a stale channel of a rank that
// reconnected cannot report or refresh it. Not thread-safe: the server's I/O
// thread owns it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include "comm/control/server.h"

namespace terra::comm::control {

class HeartbeatMonitor {
 public:
  using Clock = std::chrono::steady_clock;

  explicit HeartbeatMonitor(std::chrono::milliseconds timeout) : timeout_(timeout) {}

  // Starts watching rank on channel. Returns false, watching nothing, if the
  // rank was already reported lost.
  bool Open(int64_t rank, const void* channel, Clock::time_point now);
  void Beat(int64_t rank, const void* channel, Clock::time_point now);
  // A clean exit: stops watching without a report.
  void Goodbye(int64_t rank, const void* channel);
  // The channel closed without kGoodbye: the report, unless the channel is
  // not the rank's watched one.
  std::optional<RankLostEvent> Closed(int64_t rank, const void* channel, Clock::time_point now);
  // Reports (and stops watching) every rank silent for longer than the timeout.
  std::vector<RankLostEvent> Expired(Clock::time_point now);

  size_t watched() const { return watched_.size(); }

 private:
  struct Watched {
    const void* channel = nullptr;
    Clock::time_point last_seen;
  };

  // The rank's entry if channel is its watched one, else end().
  std::map<int64_t, Watched>::iterator Find(int64_t rank, const void* channel);
  RankLostEvent Report(std::map<int64_t, Watched>::iterator it, RankLostReason reason,
                       Clock::time_point now);

  const std::chrono::milliseconds timeout_;
  std::map<int64_t, Watched> watched_;
  std::set<int64_t> reported_;
};

}  // namespace terra::comm::control
