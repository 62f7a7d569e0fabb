#include "launcher/line_prefixer.h"

namespace terra::launcher {

std::string LinePrefixer::Feed(std::string_view data) {
  std::string out;
  while (!data.empty()) {
    size_t newline = data.find('\n');
    if (newline == std::string_view::npos) {
      pending_.append(data);
      if (pending_.size() >= kMaxPendingBytes) out += Flush();
      break;
    }
    out += prefix_;
    out += pending_;
    out.append(data.substr(0, newline + 1));
    pending_.clear();
    data.remove_prefix(newline + 1);
  }
  return out;
}

std::string LinePrefixer::Flush() {
  if (pending_.empty()) return {};
  std::string out = prefix_ + pending_ + "\n";
  pending_.clear();
  return out;
}

}  // namespace terra::launcher
