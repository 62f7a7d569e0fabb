#include "comm/control/store.h"

#include <charconv>
#include <utility>

#include "runtime/base/check.h"

namespace terra::comm::control {

void Store::Set(const std::string& key, std::string value) {
  values_[key] = std::move(value);
  WakeParked();
}

std::optional<int64_t> Store::Add(const std::string& key, int64_t delta, std::string* error) {
  int64_t current = 0;
  auto it = values_.find(key);
  if (it != values_.end()) {
    const std::string& text = it->second;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), current);
    if (ec != std::errc() || end != text.data() + text.size() || text.empty()) {
      *error = StrCat("cannot add to key '", key, "': its value '", text.substr(0, 64),
                      "' is not a decimal integer");
      return std::nullopt;
    }
  }
  int64_t sum = 0;
  if (__builtin_add_overflow(current, delta, &sum)) {
    *error = StrCat("adding ", delta, " to key '", key, "' (", current, ") overflows int64");
    return std::nullopt;
  }
  Set(key, std::to_string(sum));
  return sum;
}

const std::string* Store::Find(const std::string& key) const {
  auto it = values_.find(key);
  return it == values_.end() ? nullptr : &it->second;
}

bool Store::HasAll(const std::vector<std::string>& keys) const {
  for (const std::string& key : keys) {
    if (values_.count(key) == 0) return false;
  }
  return true;
}

std::vector<std::string> Store::Missing(const std::vector<std::string>& keys) const {
  std::vector<std::string> missing;
  for (const std::string& key : keys) {
    if (values_.count(key) == 0) missing.push_back(key);
  }
  return missing;
}

Store::ParkId Store::Park(std::vector<std::string> keys, std::function<void()> ready) {
  TERRA_INTERNAL_CHECK(!HasAll(keys), "parking a request whose keys all exist");
  ParkId id = next_id_++;
  parked_.emplace(id, Parked{std::move(keys), std::move(ready)});
  return id;
}

void Store::Cancel(ParkId id) { parked_.erase(id); }

void Store::WakeParked() {
  // Collect first: a callback may park or cancel, which would invalidate the walk.
  std::vector<std::function<void()>> ready;
  for (auto it = parked_.begin(); it != parked_.end();) {
    if (HasAll(it->second.keys)) {
      ready.push_back(std::move(it->second.ready));
      it = parked_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& callback : ready) callback();
}

}  // namespace terra::comm::control
