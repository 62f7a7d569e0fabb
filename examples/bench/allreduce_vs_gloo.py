"""All-reduce through terra.distributed (MPI) against PyTorch's gloo, taken in
one run on the same ranks and the same tensors.

    terrarun -np 2 python examples/bench/allreduce_vs_gloo.py [--sizes 1K,1M,16M] [--json out.json]

For each size: warm-up, then --iters all-reduces (sum, float32) back to back,
each waited before the next; the time is the mean per all-reduce, the max over
ranks. busbw = size / time * 2(n-1)/n (nccl-tests' definition). Backends take
turns per size (terra, gloo, terra, gloo ...), so drift hits both alike.
"""
import argparse
import json
import time

import torch
import torch.distributed as dist

import terra
import terra.distributed as tdist

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text):
    text = text.strip().upper()
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def time_loop(fn, iters):
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4K,64K,1M,4M,16M")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternations per size; best kept")
    ap.add_argument("--json")
    args = ap.parse_args()

    rank, world = tdist.rank(), tdist.world_size()
    tdist.init_torch_process_group("gloo")
    torch.set_num_threads(1)
    rows = []
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        t = torch.ones(size // 4)
        best = {"terra": float("inf"), "gloo": float("inf")}
        runs = {"terra": lambda: tdist.all_reduce(t), "gloo": lambda: dist.all_reduce(t)}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                for _ in range(args.warmup):
                    fn()
                tdist.barrier()
                seconds = torch.tensor([time_loop(fn, args.iters)], dtype=torch.float64)
                tdist.all_reduce(seconds, tdist.ReduceOp.MAX)
                best[name] = min(best[name], seconds.item())
        # The data check: ones summed over `rounds * (warmup + iters) * 2`
        # all-reduces grew geometrically; check the last step's value instead.
        t.fill_(rank + 1)
        tdist.all_reduce(t)
        assert torch.all(t == world * (world + 1) // 2)
        factor = 2 * (world - 1) / world
        row = {"bytes": size, "count": size // 4}
        for name, seconds in best.items():
            row[f"{name}_us"] = seconds * 1e6
            row[f"{name}_busbw_GBs"] = size / seconds * factor / 1e9
        row["speedup"] = best["gloo"] / best["terra"]
        rows.append(row)
    if rank == 0:
        print(f"all-reduce, float32 sum, {world} ranks, best of {args.rounds} rounds of "
              f"{args.iters} (max over ranks)")
        print(f"{'size':>10} {'terra us':>10} {'busbw GB/s':>10} {'gloo us':>10} "
              f"{'busbw GB/s':>10} {'terra/gloo':>10}")
        for r in rows:
            print(f"{r['bytes']:>10} {r['terra_us']:>10.1f} {r['terra_busbw_GBs']:>10.3f} "
                  f"{r['gloo_us']:>10.1f} {r['gloo_busbw_GBs']:>10.3f} {r['speedup']:>9.2f}x")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"world_size": world, "iters": args.iters, "rounds": args.rounds,
                           "rows": rows}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
