"""The default example: a small CNN trained data-parallel on synthetic data.

    terrarun -np 2 examples/ddp_train.py [--steps 150] [--batch 64]

Every rank generates the same synthetic data set from a fixed seed (labels
come from a fixed random "teacher" network, so there is something to learn),
trains on its shard of every global batch, and averages gradients across
ranks. Rank 0 prints the loss as it goes and a report at the end.

Gradients are averaged by terra.distributed.DistributedDataParallel: buckets
all-reduced through MPI while backward runs. The report compares the step
time with the time the same job spends on one rank doing the whole global
batch, and says how much of the all-reduce time backward hid.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import terra
import terra.distributed as tdist


class Net(nn.Module):
    def __init__(self, classes=10, width=128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, width)
        self.fc2 = nn.Linear(width, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=g)
    teacher = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(16, 10))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        y = teacher(x).argmax(1)
    return x, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch size")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--ddp", choices=["terra", "torch"], default="terra",
                        help="torch: PyTorch's DDP over gloo, for comparison")
    parser.add_argument("--width", type=int, default=128, help="hidden units of fc1")
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0)
    parser.add_argument("--json", help="also write the report's figures here (rank 0)")
    args = parser.parse_args()

    rank, world = tdist.rank(), tdist.world_size()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    global_batch = args.batch * world
    x, y = make_data(global_batch * 32 + 2048, seed=1234)
    x_test, y_test = x[-2048:], y[-2048:]
    x_train, y_train = x[:-2048], y[:-2048]
    batches = len(x_train) // global_batch

    if args.ddp == "torch":
        tdist.init_torch_process_group("gloo")
        model = nn.parallel.DistributedDataParallel(Net(width=args.width),
                                                    bucket_cap_mb=args.bucket_cap_mb)
    else:
        model = tdist.DistributedDataParallel(Net(width=args.width),
                                              bucket_cap_mb=args.bucket_cap_mb)
    stats = getattr(model, "stats", {"comm_wait_s": 0.0, "waits_queued": 0})
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    first_loss = None
    start = time.perf_counter()
    for step in range(args.steps):
        b = step % batches
        # This rank's shard of global batch b.
        chunk = slice(b * global_batch, (b + 1) * global_batch)
        xb = tdist.shard(x_train[chunk], rank, world)
        yb = tdist.shard(y_train[chunk], rank, world)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if first_loss is None:
            first_loss = loss.item()
            start = time.perf_counter()  # exclude the first step's warm-up
            wait_at_start = stats["comm_wait_s"]
            queued_at_start = stats["waits_queued"]
        if rank == 0 and (step % 25 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}")
    elapsed = time.perf_counter() - start
    exposed = stats["comm_wait_s"] - wait_at_start
    queued_waits = stats["waits_queued"] - queued_at_start
    comm_alone = time_allreduce_alone(model) if world > 1 and args.ddp == "terra" else 0.0

    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        low, high = flat.clone(), flat.clone()
        tdist.all_reduce(low, op=tdist.ReduceOp.MIN)
        tdist.all_reduce(high, op=tdist.ReduceOp.MAX)
        identical = bool(torch.equal(low, high))
    if rank == 0:
        timed = max(args.steps - 1, 1)
        params = sum(p.numel() for p in model.parameters())
        print("")
        print(f"terra main job: data-parallel training on {world} CPU rank(s) under terrarun")
        print(f"  model           small CNN, {params:,} parameters")
        print(f"  steps           {args.steps}, global batch {global_batch} ({args.batch} per rank)")
        print(f"  loss            {first_loss:.4f} -> {loss.item():.4f}")
        print(f"  test accuracy   {accuracy * 100:.1f}% (10 classes, chance 10%)")
        print(f"  throughput      {timed * global_batch / elapsed:,.0f} samples/s, "
              f"{elapsed / timed * 1000:.1f} ms/step")
        if world > 1 and args.ddp == "terra":
            step_exposed = exposed / timed
            hidden = max(0.0, 1.0 - step_exposed / comm_alone) if comm_alone > 0 else 0.0
            buckets = len(model.bucket_plan)
            overlap = (f"{hidden * 100:.0f}% hidden by backward" if buckets > 1 else
                       "one bucket: it starts with the last gradient, so little of backward "
                       "is left to hide it")
            # Co-executed steps: the executor launches and waits for the
            # all-reduces in program order, and the program's thread goes on.
            waits = buckets * timed
            if queued_waits >= waits:
                print(f"  gradient sync   {buckets} bucket(s); all-reduce alone "
                      f"{comm_alone * 1000:.2f} ms/step, launched and waited for by Terra's "
                      "executor, not by the program (co-execution)")
            else:
                queued = (f"; {queued_waits} of {waits} waits queued on Terra's executor "
                          "(the co-executed steps)" if queued_waits else "")
                print(f"  gradient sync   {buckets} bucket(s); all-reduce alone "
                      f"{comm_alone * 1000:.2f} ms/step, left waiting after backward "
                      f"{step_exposed * 1000:.2f} ms/step ({overlap}){queued}")
        print(f"  parameters      {'identical on every rank' if identical else 'DIFFER across ranks'}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"world_size": world, "ddp": args.ddp, "params": params,
                           "global_batch": global_batch, "ms_per_step": elapsed / timed * 1000,
                           "samples_per_s": timed * global_batch / elapsed,
                           "first_loss": first_loss, "last_loss": loss.item(),
                           "accuracy": accuracy,
                           "buckets": len(getattr(model, "bucket_plan", [])),
                           "allreduce_alone_ms": comm_alone * 1000,
                           "exposed_wait_ms": exposed / timed * 1000}, f, indent=1)
    if not identical:
        raise SystemExit("parameters differ across ranks")


def time_allreduce_alone(model, repeats=20):
    """Seconds one step's bucket all-reduces take with nothing to overlap."""
    flats = [torch.zeros(sum(p.numel() for p in bucket_params(model, names)))
             for names in model.bucket_plan]
    tdist.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        works = [tdist.all_reduce(f, tdist.ReduceOp.AVG, async_op=True) for f in flats]
        for w in works:
            w.wait()
    return (time.perf_counter() - start) / repeats


def bucket_params(model, names):
    params = dict(model.module.named_parameters())
    return [params[n] for n in names]


if __name__ == "__main__":
    main()
