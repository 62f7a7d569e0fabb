// Store: the control plane's key-value map and the requests parked on it
// (kGet and kWait that arrived before their keys). It knows nothing of
// sockets or timers: ControlServer answers the requests and expires them.
//
// Threading: not thread-safe; the server's I/O thread owns it. A ready
// callback runs inside the Set or Add that completed its keys, after it has
// been removed, so it may call back into the Store.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace terra::comm::control {

class Store {
 public:
  using ParkId = uint64_t;

  void Set(const std::string& key, std::string value);

  // Adds delta to the decimal integer at key (missing: 0) and stores the sum.
  // Returns nullopt and sets *error if the value is not an integer or the
  // sum overflows; the value is then left as it was.
  std::optional<int64_t> Add(const std::string& key, int64_t delta, std::string* error);

  // Null if the key is missing; valid until the key is next set.
  const std::string* Find(const std::string& key) const;
  bool HasAll(const std::vector<std::string>& keys) const;
  std::vector<std::string> Missing(const std::vector<std::string>& keys) const;

  // Calls ready once, when every key exists. The keys must not all exist yet.
  ParkId Park(std::vector<std::string> keys, std::function<void()> ready);
  // Forgets a parked request; a no-op if it already ran or was cancelled.
  void Cancel(ParkId id);

  size_t size() const { return values_.size(); }
  size_t parked() const { return parked_.size(); }

 private:
  struct Parked {
    std::vector<std::string> keys;
    std::function<void()> ready;
  };

  void WakeParked();

  std::unordered_map<std::string, std::string> values_;
  std::map<ParkId, Parked> parked_;  // ordered: wakes in arrival order
  ParkId next_id_ = 1;
};

}  // namespace terra::comm::control
