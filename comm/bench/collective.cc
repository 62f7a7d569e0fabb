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
    case CollectiveKind::kBarrier:
      break;  // moves no data: nothing to measure in bandwidth
  }
  TERRA_INTERNAL_CHECK(false, "no benchmark for ", CollectiveKindName(kind));
  return nullptr;
}

}  // namespace terra::comm::bench
