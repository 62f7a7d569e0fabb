"""Trains a small model with terra.distributed.DistributedDataParallel and
saves what tests/python/test_coexec_distributed.py compares.

    terrarun -np 2 --mode coexec ddp_coexec.py --out result [options]
    terrarun -np 2 --mode eager  ddp_coexec.py --out result [options]

Each rank saves its parameters, buffers and losses to ``<out>.rank<r>.pt``
and prints one line ``STATS {json}``: ``terra.stats()["coexec"]`` (empty
under --mode eager). BatchNorm trains, so its buffers are broadcast before
each forward; --bucket-cap-mb splits the gradients into several buckets;
--unused adds a branch used every third step (find_unused_parameters=True:
one more all-reduce, of the used-map, at the end of backward);
--accumulate K splits each step into K micro-batches, all but the last
under ddp.no_sync().
Deterministic algorithms are on, as in tests/python/programs/ddp_check.py.
--diverge-rank R --diverge-at N,M,...: at those steps only rank R runs one
more op in its forward, a different one each time (a Python path that
depends on the rank), so it leaves the TraceGraph (a new path while tracing,
a fallback under co-execution) while the other ranks follow it.
"""
import argparse
import contextlib
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

import terra
import terra.distributed as tdist


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(12, 48)
        self.body = nn.Sequential(nn.Linear(48, 64), nn.Tanh(), nn.Linear(64, 32))
        self.norm = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 5)
        self.side = nn.Linear(48, 5)

    def forward(self, x, extra, use_side):
        h = torch.relu(self.embed(x))
        if extra is not None:
            h = h + 0.25 * (torch.sin, torch.cos, torch.tanh)[extra % 3](h)
        out = self.head(self.norm(self.body(h)))
        return out + self.side(h) if use_side else out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="per rank")
    ap.add_argument("--bucket-cap-mb", type=float, default=0.01)
    ap.add_argument("--unused", action="store_true")
    ap.add_argument("--accumulate", type=int, default=1, help="micro-batches per step (no_sync)")
    ap.add_argument("--diverge-rank", type=int, default=-1)
    ap.add_argument("--diverge-at", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    diverge_at = [int(s) for s in args.diverge_at.split(",") if s]

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rank, world = tdist.rank(), tdist.world_size()
    torch.manual_seed(7 + rank)  # different initial weights: DDP broadcasts rank 0's
    model = Model()
    ddp = tdist.DistributedDataParallel(model, bucket_cap_mb=args.bucket_cap_mb,
                                        find_unused_parameters=args.unused)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    losses = []
    for step in range(args.steps):
        g = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(args.batch * world, 12, generator=g)[rank::world]
        y = torch.randint(0, 5, (args.batch * world,), generator=g)[rank::world]
        extra = diverge_at.index(step) if rank == args.diverge_rank and step in diverge_at else None
        use_side = not args.unused or step % 3 == 0
        if args.accumulate == 1:
            loss = F.cross_entropy(ddp(x, extra, use_side), y)
            opt.zero_grad()
            loss.backward()
        else:
            # Gradient accumulation: all micro-batches but the last skip the
            # all-reduce (no_sync), so the same backward runs with DDP's
            # hooks doing nothing, then with them reducing.
            opt.zero_grad()
            loss = 0.0
            for k, (xc, yc) in enumerate(zip(x.chunk(args.accumulate), y.chunk(args.accumulate))):
                with ddp.no_sync() if k < args.accumulate - 1 else contextlib.nullcontext():
                    part = F.cross_entropy(ddp(xc, extra, use_side), yc) / args.accumulate
                    part.backward()
                loss = loss + part.detach()
        opt.step()
        losses.append(loss.detach())

    state = {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
             "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
             "losses": torch.stack(losses)}
    torch.save(state, f"{args.out}.rank{rank}.pt")
    # Every rank ends with the same parameters.
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = torch.empty(flat.numel() * world)
    tdist.all_gather_into_tensor(gathered, flat)
    for r in range(world):
        block = gathered[r * flat.numel():(r + 1) * flat.numel()]
        assert torch.equal(block, flat), f"rank {r}'s parameters differ from rank {rank}'s"
    print("STATS " + json.dumps(terra.stats().get("coexec", {})), flush=True)


if __name__ == "__main__":
    main()
