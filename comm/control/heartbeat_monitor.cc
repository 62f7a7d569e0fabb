#include "comm/control/heartbeat_monitor.h"

namespace terra::comm::control {

bool HeartbeatMonitor::Open(int64_t rank, const void* channel, Clock::time_point now) {
  if (reported_.count(rank) != 0) return false;
  watched_[rank] = Watched{channel, now};
  return true;
}

void HeartbeatMonitor::Beat(int64_t rank, const void* channel, Clock::time_point now) {
  auto it = Find(rank, channel);
  if (it != watched_.end()) it->second.last_seen = now;
}

void HeartbeatMonitor::Goodbye(int64_t rank, const void* channel) {
  auto it = Find(rank, channel);
  if (it != watched_.end()) watched_.erase(it);
}

std::optional<RankLostEvent> HeartbeatMonitor::Closed(int64_t rank, const void* channel,
                                                      Clock::time_point now) {
  auto it = Find(rank, channel);
  if (it == watched_.end()) return std::nullopt;
  return Report(it, RankLostReason::kConnectionClosed, now);
}

std::vector<RankLostEvent> HeartbeatMonitor::Expired(Clock::time_point now) {
  std::vector<RankLostEvent> events;
  for (auto it = watched_.begin(); it != watched_.end();) {
    auto next = std::next(it);
    if (now - it->second.last_seen > timeout_) {
      events.push_back(Report(it, RankLostReason::kHeartbeatTimeout, now));
    }
    it = next;
  }
  return events;
}

std::map<int64_t, HeartbeatMonitor::Watched>::iterator HeartbeatMonitor::Find(
    int64_t rank, const void* channel) {
  auto it = watched_.find(rank);
  return it != watched_.end() && it->second.channel == channel ? it : watched_.end();
}

RankLostEvent HeartbeatMonitor::Report(std::map<int64_t, Watched>::iterator it,
                                       RankLostReason reason, Clock::time_point now) {
  RankLostEvent event{it->first, reason,
                      std::chrono::duration_cast<std::chrono::milliseconds>(
                          now - it->second.last_seen)};
  reported_.insert(it->first);
  watched_.erase(it);
  return event;
}

}  // namespace terra::comm::control
