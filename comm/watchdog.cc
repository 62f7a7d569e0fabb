#include "comm/watchdog.h"

#include <algorithm>
#include <iterator>
#include <utility>
#include <vector>

namespace terra::comm {

Watchdog::Watchdog(std::function<void(const Work&)> on_expired)
    : on_expired_(std::move(on_expired)), thread_([this] { Loop(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_cv_.notify_all();
  thread_.join();
}

void Watchdog::Watch(std::shared_ptr<Work> work, Clock::time_point deadline, Status on_expiry) {
  bool earliest;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (entries_.size() >= prune_at_) Prune();
    earliest = entries_.empty() || deadline < entries_.begin()->first;
    entries_.emplace(deadline, Entry{work, std::move(on_expiry)});
  }
  if (earliest) changed_cv_.notify_all();
}

void Watchdog::Prune() {
  for (auto it = entries_.begin(); it != entries_.end();) {
    auto work = it->second.work.lock();
    it = (!work || work->IsCompleted()) ? entries_.erase(it) : std::next(it);
  }
  prune_at_ = std::max<size_t>(kMinPruneAt, 2 * entries_.size());
}

void Watchdog::Loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    if (entries_.empty()) {
      changed_cv_.wait(lock);
      continue;
    }
    auto deadline = entries_.begin()->first;
    if (Clock::now() < deadline) {
      changed_cv_.wait_until(lock, deadline);
      continue;
    }
    std::vector<Entry> due;
    while (!entries_.empty() && entries_.begin()->first <= Clock::now()) {
      due.push_back(std::move(entries_.begin()->second));
      entries_.erase(entries_.begin());
    }
    lock.unlock();
    for (auto& entry : due) {
      std::shared_ptr<Work> work = entry.work.lock();
      if (work && work->Complete(std::move(entry.on_expiry)) && on_expired_) on_expired_(*work);
    }
    lock.lock();
  }
}

}  // namespace terra::comm
