// Watchdog: enforces the per-collective timeout of the options structs.
//
// A communicator hands every Work with a deadline to its Watchdog. One thread
// sleeps until the earliest deadline; a Work still pending then is completed
// with the Status given at Watch() and the on_expired callback runs (on the
// watchdog thread, without the watchdog's lock held). A Work that completes in
// time is simply forgotten; the watchdog never blocks the collective itself.
// The destructor stops the thread; pending Works are left as they are.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "comm/work.h"
#include "runtime/base/status.h"

namespace terra::comm {

class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Watchdog(std::function<void(const Work&)> on_expired);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void Watch(std::shared_ptr<Work> work, Clock::time_point deadline, Status on_expiry);

 private:
  struct Entry {
    std::weak_ptr<Work> work;
    Status on_expiry;
  };

  static constexpr size_t kMinPruneAt = 1024;

  void Loop();
  // Drops entries whose Work completed (the map would otherwise hold one per
  // collective of the last `timeout`). Called with mutex_ held.
  void Prune();

  std::function<void(const Work&)> on_expired_;
  std::mutex mutex_;
  std::condition_variable changed_cv_;
  std::multimap<Clock::time_point, Entry> entries_;
  size_t prune_at_ = kMinPruneAt;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace terra::comm
