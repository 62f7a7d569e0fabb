"""Trains a small model data-parallel and saves what the tests compare.

    terrarun -np 2 ddp_check.py --ddp terra|torch --out result.pt [options]
    python ddp_check.py --ddp none --world 2 --out result.pt [options]

--ddp none is the reference: one process trains on the concatenation of what
the --world ranks would see, with the same optimizer. The data of every step
is derived from a fixed seed, so all runs see the same global batches.
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    def __init__(self, unused_branch, frozen):
        super().__init__()
        self.embed = nn.Linear(12, 48)
        self.frozen = nn.Linear(48, 48)  # requires_grad=False with --frozen
        self.body = nn.Sequential(nn.Linear(48, 96), nn.Tanh(), nn.Linear(96, 32))
        self.norm = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 5, bias=False)
        self.side = nn.Linear(48, 5)  # used only on some steps with --unused
        self.unused_branch = unused_branch
        if frozen:
            for p in self.frozen.parameters():
                p.requires_grad_(False)

    def forward(self, x, step):
        h = torch.relu(self.frozen(torch.relu(self.embed(x))))
        out = self.head(self.norm(self.body(h)))
        if not self.unused_branch or step % 3 == 0:
            out = out + self.side(h)
        return out


def batches(step, global_batch, micro):
    g = torch.Generator().manual_seed(1000 + step)
    for _ in range(micro):
        x = torch.randn(global_batch, 12, generator=g)
        y = torch.randint(0, 5, (global_batch,), generator=g)
        yield x, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ddp", choices=["terra", "torch", "none"], required=True)
    ap.add_argument("--world", type=int, default=0, help="--ddp none: ranks to emulate")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="per rank")
    ap.add_argument("--micro", type=int, default=1, help="micro-batches per step (no_sync)")
    ap.add_argument("--bucket-cap-mb", type=float, default=25.0)
    ap.add_argument("--unused", action="store_true")
    ap.add_argument("--frozen", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if args.ddp == "none":
        rank, world = 0, args.world
    else:
        import terra.distributed as tdist
        rank, world = tdist.rank(), tdist.world_size()
    # Different initial weights per rank: DDP must broadcast rank 0's.
    torch.manual_seed(7 + (rank if args.ddp != "none" else 0))
    model = Model(args.unused, args.frozen)

    if args.ddp == "terra":
        ddp = tdist.DistributedDataParallel(model, bucket_cap_mb=args.bucket_cap_mb,
                                            find_unused_parameters=args.unused)
    elif args.ddp == "torch":
        tdist.init_torch_process_group("gloo")
        ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_cap_mb,
                                                  find_unused_parameters=args.unused)
    else:
        ddp = model
    # BatchNorm statistics differ between a shard and the whole batch; the
    # reference would need SyncBatchNorm. Evaluate it in eval mode instead.
    model.norm.eval()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                          momentum=0.9)

    losses = []
    for step in range(args.steps):
        opt.zero_grad()
        micro = list(batches(step, args.batch * world, args.micro))
        for m, (x, y) in enumerate(micro):
            if args.ddp != "none":
                x, y = x[rank::world], y[rank::world]
            last = m == len(micro) - 1
            if args.ddp != "none" and not last:
                with ddp.no_sync():
                    loss = F.cross_entropy(ddp(x, step), y)
                    loss.backward()
            else:
                loss = F.cross_entropy(ddp(x, step), y)
                loss.backward()
            losses.append(loss.item())
        opt.step()

    if args.ddp == "none" or rank == 0:
        torch.save({"params": {n: p.detach().clone() for n, p in model.named_parameters()},
                    "losses": losses,
                    "plan": getattr(ddp, "bucket_plan", None)}, args.out)
    if args.ddp != "none":
        # Every rank ends with rank 0's parameters.
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = torch.empty(flat.numel() * world)
        tdist.all_gather_into_tensor(gathered, flat)
        for r in range(world):
            block = gathered[r * flat.numel():(r + 1) * flat.numel()]
            assert torch.equal(block, flat), f"rank {r}'s parameters differ from rank {rank}'s"


if __name__ == "__main__":
    main()
