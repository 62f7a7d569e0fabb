// FakeWorld: an in-process "job" of N ranks whose FakeCommunicators are used
// from N threads of one process. For unit tests of code that takes a
// Communicator: the collectives really compute (with comm/reduce.h), so
// tests can check values.
//
// How it works: each rank's k-th collective is matched with every other
// rank's k-th. A submission that is not the last of its collective returns a
// pending Work; the last one runs the collective on the submitting thread,
// under the world's lock, and completes all N Works, so collectives complete
// in submission order. If the ranks disagree (kind, count, dtype, op, root),
// every rank's Work fails with an error naming the difference.
//
// Timeouts: a Work pending past its options' timeout fails with kTimeout and
// breaks the whole world: every pending and every later collective fails
// with kAborted (as a real job would be torn down).
//
// Threading: any thread may use any rank's communicator. The FakeWorld
// outlives its communicators' use; its destructor fails Works still pending
// with kAborted.
#pragma once

#include <memory>
#include <vector>

#include "comm/collective.h"
#include "comm/communicator.h"

namespace terra::comm {

class FakeWorld;

class FakeCommunicator final : public Communicator {
 public:
  int rank() const override { return rank_; }
  int size() const override;
  const char* backend() const override { return "fake"; }

  std::shared_ptr<Work> Allreduce(Buffer buffer, const AllreduceOptions& options) override;
  std::shared_ptr<Work> Broadcast(Buffer buffer, const BroadcastOptions& options) override;
  std::shared_ptr<Work> Allgather(Buffer input, Buffer output,
                                  const AllgatherOptions& options) override;
  std::shared_ptr<Work> ReduceScatter(Buffer input, Buffer output,
                                      const ReduceScatterOptions& options) override;
  std::shared_ptr<Work> Barrier(const BarrierOptions& options) override;

 private:
  friend class FakeWorld;
  FakeCommunicator(FakeWorld* world, int rank) : world_(world), rank_(rank) {}

  FakeWorld* world_;
  int rank_;
};

class FakeWorld {
 public:
  explicit FakeWorld(int size);
  ~FakeWorld();
  FakeWorld(const FakeWorld&) = delete;
  FakeWorld& operator=(const FakeWorld&) = delete;

  int size() const;
  // Owned by the world.
  FakeCommunicator& communicator(int rank);

 private:
  friend class FakeCommunicator;
  class State;

  std::shared_ptr<Work> Submit(int rank, const Collective& collective);

  std::unique_ptr<State> state_;
  std::vector<std::unique_ptr<FakeCommunicator>> communicators_;
};

}  // namespace terra::comm
