"""DDP step time on the default example, side by side in one run:

  one process     python examples/ddp_train.py, the whole global batch
  terra  -np N    terrarun -np N, terra.distributed.DistributedDataParallel
  torch  -np N    terrarun -np N, PyTorch's DDP over gloo

and, for Terra, how much of the all-reduce time backward hides: the bucket
all-reduces timed alone against the time backward's end still waited.

    python examples/bench/ddp_step.py [--ranks 2] [--steps 100] [--width 128 1024] [--json out.json]

Each configuration runs --repeats times, alternating; the median is kept.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "ddp_train.py")


def run_once(kind, ranks, args, width):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        common = ["--steps", str(args.steps), "--width", str(width), "--json", out.name]
        if kind == "single":
            cmd = [sys.executable, EXAMPLE, "--batch", str(args.batch * ranks), *common]
        else:
            cmd = [shutil.which("terrarun"), "-np", str(ranks), sys.executable, EXAMPLE,
                   "--batch", str(args.batch), "--ddp", kind, *common]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
        return json.load(open(out.name))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64, help="per rank")
    ap.add_argument("--width", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()

    rows = []
    for width in args.width:
        results = {"single": [], "terra": [], "torch": []}
        for _ in range(args.repeats):
            for kind in results:
                results[kind].append(run_once(kind, args.ranks, args, width))
        row = {"width": width, "params": results["single"][0]["params"]}
        for kind, runs in results.items():
            row[f"{kind}_ms"] = statistics.median(r["ms_per_step"] for r in runs)
        terra = results["terra"]
        row["buckets"] = terra[0]["buckets"]
        row["allreduce_alone_ms"] = statistics.median(r["allreduce_alone_ms"] for r in terra)
        row["exposed_wait_ms"] = statistics.median(r["exposed_wait_ms"] for r in terra)
        alone = row["allreduce_alone_ms"]
        row["hidden_fraction"] = max(0.0, 1 - row["exposed_wait_ms"] / alone) if alone else 0.0
        rows.append(row)

    print(f"DDP step time, default example, global batch {args.batch * args.ranks}, "
          f"{args.ranks} ranks, median of {args.repeats}")
    print(f"{'params':>9} {'1 proc ms':>10} {'terra ms':>9} {'torch ms':>9} {'terra/torch':>11} "
          f"{'buckets':>7} {'ar alone ms':>11} {'waited ms':>9} {'hidden':>7}")
    for r in rows:
        print(f"{r['params']:>9,} {r['single_ms']:>10.1f} {r['terra_ms']:>9.1f} "
              f"{r['torch_ms']:>9.1f} {r['torch_ms'] / r['terra_ms']:>10.2f}x {r['buckets']:>7} "
              f"{r['allreduce_alone_ms']:>11.2f} {r['exposed_wait_ms']:>9.2f} "
              f"{r['hidden_fraction'] * 100:>6.0f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ranks": args.ranks, "steps": args.steps, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
