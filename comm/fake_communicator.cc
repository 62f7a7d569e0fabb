#include "comm/fake_communicator.h"

#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "comm/reduce.h"
#include "comm/watchdog.h"
#include "runtime/base/check.h"

namespace terra::comm {
namespace {

struct Joined {
  Collective collective;
  std::shared_ptr<Work> work;
};

// One collective being matched: slot r holds rank r's call once it joined.
struct Pending {
  std::vector<std::optional<Joined>> ranks;
  int joined = 0;
};

std::vector<char> ReduceAll(const std::vector<std::optional<Joined>>& ranks, const Collective& c) {
  size_t bytes = c.input.bytes();
  std::vector<char> acc(static_cast<const char*>(c.input.data),
                        static_cast<const char*>(c.input.data) + bytes);
  for (size_t r = 1; r < ranks.size(); ++r) {
    ReduceInto(acc.data(), ranks[r]->collective.input.data, c.input.count, c.input.dtype, c.op);
  }
  if (c.op == ReduceOp::kAvg)
    DivideBy(acc.data(), c.input.count, c.input.dtype, static_cast<int>(ranks.size()));
  return acc;
}

// Runs a matched, consistent collective on every rank's buffers.
void Run(const std::vector<std::optional<Joined>>& ranks) {
  const Collective& first = ranks[0]->collective;
  switch (first.kind) {
    case CollectiveKind::kBarrier:
      return;
    case CollectiveKind::kAllreduce: {
      std::vector<char> result = ReduceAll(ranks, first);
      for (const auto& j : ranks)
        std::memcpy(j->collective.input.data, result.data(), result.size());
      return;
    }
    case CollectiveKind::kBroadcast: {
      const Buffer& root = ranks[static_cast<size_t>(first.root)]->collective.input;
      for (const auto& j : ranks) {
        if (j->collective.input.data != root.data)
          std::memcpy(j->collective.input.data, root.data, root.bytes());
      }
      return;
    }
    case CollectiveKind::kAllgather: {
      std::vector<char>
          gathered;  // first, so that an input inside an output is read before written
      for (const auto& j : ranks) {
        const char* in = static_cast<const char*>(j->collective.input.data);
        gathered.insert(gathered.end(), in, in + j->collective.input.bytes());
      }
      for (const auto& j : ranks)
        std::memcpy(j->collective.output.data, gathered.data(), gathered.size());
      return;
    }
    case CollectiveKind::kReduceScatter: {
      std::vector<char> result = ReduceAll(ranks, first);
      size_t block = first.output.bytes();
      for (size_t r = 0; r < ranks.size(); ++r) {
        std::memcpy(ranks[r]->collective.output.data, result.data() + r * block, block);
      }
      return;
    }
  }
}

}  // namespace

class FakeWorld::State {
 public:
  explicit State(int size)
      : size_(size),
        next_sequence_(static_cast<size_t>(size), 0),
        watchdog_([this](const Work& expired) { Break(expired.description()); }) {}

  ~State() {
    std::lock_guard<std::mutex> lock(mutex_);
    FailPending(Status(StatusCode::kAborted, "the FakeWorld was destroyed"));
  }

  int size() const { return size_; }

  std::shared_ptr<Work> Submit(int rank, const Collective& c) {
    Validate(c, size_, DeviceType::kCpu, "fake");
    auto work = std::make_shared<Work>(Describe(c, rank, size_, "fake"));
    std::lock_guard<std::mutex> lock(mutex_);
    if (!broken_reason_.empty()) {
      work->Complete(Status(StatusCode::kAborted,
                            StrCat(work->description(), " was not run: ", broken_reason_)));
      return work;
    }
    int64_t sequence = next_sequence_[static_cast<size_t>(rank)]++;
    Pending& pending = pending_[sequence];
    if (pending.ranks.empty()) pending.ranks.resize(static_cast<size_t>(size_));
    pending.ranks[static_cast<size_t>(rank)] = Joined{c, work};
    if (++pending.joined == size_) {
      Finish(pending.ranks);
      pending_.erase(sequence);
    } else if (c.timeout != kNoTimeout) {
      watchdog_.Watch(work, Watchdog::Clock::now() + c.timeout,
                      Status(StatusCode::kTimeout,
                             StrCat(work->description(), " did not complete within its timeout of ",
                                    static_cast<double>(c.timeout.count()) / 1000.0,
                                    " s: a rank never joined it, or joined late")));
    }
    return work;
  }

 private:
  // Checks that every rank issued the same collective, runs it, completes the Works.
  void Finish(const std::vector<std::optional<Joined>>& ranks) {
    std::string mismatch;
    for (size_t r = 1; r < ranks.size() && mismatch.empty(); ++r) {
      mismatch = Mismatch(ranks[0]->collective, 0, ranks[r]->collective, static_cast<int>(r));
    }
    Status status;
    if (mismatch.empty()) {
      try {
        Run(ranks);
      } catch (const std::exception& e) {
        status = Status(StatusCode::kInternal, e.what());
      }
    } else {
      status = Status(StatusCode::kInvalidArgument,
                      StrCat("the ranks issued different collectives: ", mismatch));
    }
    for (const auto& j : ranks) {
      Status own = status;
      if (!own.ok())
        own = Status(own.code(), StrCat(j->work->description(), " failed: ", own.message()));
      j->work->Complete(std::move(own));
    }
  }

  void Break(const std::string& expired) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (broken_reason_.empty())
      broken_reason_ = StrCat("the fake world is broken since ", expired, " timed out");
    FailPending(Status(StatusCode::kAborted, broken_reason_));
  }

  void FailPending(const Status& status) {
    for (auto& [sequence, pending] : pending_) {
      for (auto& j : pending.ranks) {
        if (j)
          j->work->Complete(
              Status(status.code(), StrCat(j->work->description(), ": ", status.message())));
      }
    }
    pending_.clear();
  }

  const int size_;
  std::mutex mutex_;
  std::vector<int64_t> next_sequence_;
  std::map<int64_t, Pending> pending_;
  std::string broken_reason_;
  Watchdog watchdog_;  // last: destroyed (its thread stopped) first
};

FakeWorld::FakeWorld(int size) {
  TERRA_CHECK(size >= 1, "FakeWorld needs at least one rank, got ", size);
  state_ = std::make_unique<State>(size);
  for (int r = 0; r < size; ++r) communicators_.emplace_back(new FakeCommunicator(this, r));
}

FakeWorld::~FakeWorld() = default;

int FakeWorld::size() const { return state_->size(); }

FakeCommunicator& FakeWorld::communicator(int rank) {
  TERRA_CHECK(rank >= 0 && rank < size(), "FakeWorld has no rank ", rank);
  return *communicators_[static_cast<size_t>(rank)];
}

std::shared_ptr<Work> FakeWorld::Submit(int rank, const Collective& collective) {
  return state_->Submit(rank, collective);
}

int FakeCommunicator::size() const { return world_->size(); }

std::shared_ptr<Work> FakeCommunicator::Allreduce(Buffer buffer, const AllreduceOptions& options) {
  return world_->Submit(rank_, Collective::Of(buffer, options));
}

std::shared_ptr<Work> FakeCommunicator::Broadcast(Buffer buffer, const BroadcastOptions& options) {
  return world_->Submit(rank_, Collective::Of(buffer, options));
}

std::shared_ptr<Work> FakeCommunicator::Allgather(Buffer input, Buffer output,
                                                  const AllgatherOptions& options) {
  return world_->Submit(rank_, Collective::Of(input, output, options));
}

std::shared_ptr<Work> FakeCommunicator::ReduceScatter(Buffer input, Buffer output,
                                                      const ReduceScatterOptions& options) {
  return world_->Submit(rank_, Collective::Of(input, output, options));
}

std::shared_ptr<Work> FakeCommunicator::Barrier(const BarrierOptions& options) {
  return world_->Submit(rank_, Collective::Of(options));
}

}  // namespace terra::comm
