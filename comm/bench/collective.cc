#include "comm/bench/collective.h"

namespace terra::comm::bench {

std::unique_ptr<BenchCollective> MakeCollective(CollectiveKind kind) {
  switch (kind) {
    case CollectiveKind::kAllreduce:
      return MakeAllreduce();
    case CollectiveKind::kAllgather:
      return MakeAllgather();
    case CollectiveKind::kReduceScatter:
      return MakeReduceScatter();
    case CollectiveKind::kBroadcast:
      return MakeBroadcast();
  }
  return nullptr;
}

}  // namespace terra::comm::bench
