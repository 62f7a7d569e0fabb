"""Co-execution against eager, in one process, in alternating blocks: an A/B that a noisy machine's drift cannot bias.

    python3 examples/bench/auto_ab.py --programs lstm_lm,gpt2 --blocks 15 --block 3

Each suite program runs under `terrarun` in Terra's default mode (auto)
with a long probe (TERRA_AUTO_PROBE_BLOCKS / TERRA_AUTO_PROBE_BLOCK): once
the TraceGraph is stable, blocks of co-executed and eager iterations take
turns, co-execution first and last. Each eager block is compared with the
co-executed blocks on both sides of it (their mean), so a slow drift of the
machine's speed, which moves a run of separate processes by up to 40 % here,
cancels. Prints, per program, the median of those paired ratios (eager time
over co-execution time: above 1 co-execution is faster), their range, and
the per-iteration medians of each mode. Separate processes run minutes apart
compare the machine at two moments; this compares the modes at the same one.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROGRAMS_DIR = os.path.join(ROOT, "examples", "programs")
TRACED_ITERATIONS = 8  # prologue and tracing until stable, with room to spare


def paired_ratios(coexec, eager):
    """eager[j] over the mean of the co-executed blocks on either side of it."""
    return [e / ((coexec[j] + coexec[j + 1]) / 2) for j, e in enumerate(eager) if j + 1 < len(coexec)]


def run_one(name, blocks, block, extra):
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = os.path.join(tmp, "stats.json")
        env = dict(os.environ, TERRA_AUTO_PROBE_BLOCKS=str(blocks), TERRA_AUTO_PROBE_BLOCK=str(block),
                   TERRA_STATS_JSON=stats_path)
        iters = TRACED_ITERATIONS + blocks * block + 2
        cmd = ["terrarun", "-np", "1", os.path.join(PROGRAMS_DIR, name + ".py"), "--iters", str(iters),
               "--warmup", "0", *extra]
        proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"{name}: terrarun exited with {proc.returncode}\n{proc.stderr[-3000:]}")
        with open(stats_path) as f:
            stats = json.load(f)
    auto = stats.get("auto")
    if not auto or auto.get("chosen") is None:
        reason = "the TraceGraph never became stable" if not auto else "the program ended mid-probe"
        return {"program": name, "skipped": reason}
    coexec, eager = auto["coexec_iteration_s"], auto["eager_iteration_s"]
    ratios = paired_ratios(coexec, eager)
    return {"program": name, "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "pairs": len(ratios),
            "coexec_ms": 1e3 * statistics.median(coexec), "eager_ms": 1e3 * statistics.median(eager),
            "chosen": auto["chosen"], "coexec_iteration_s": coexec, "eager_iteration_s": eager}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", default="lstm_lm,gpt2,resnet,dcgan",
                        help="comma-separated suite programs")
    parser.add_argument("--blocks", type=int, default=15, help="alternating blocks (odd)")
    parser.add_argument("--block", type=int, default=3, help="iterations per block (the first is not timed)")
    parser.add_argument("--json", help="write the rows here")
    args, extra = parser.parse_known_args()
    if args.blocks < 3 or args.blocks % 2 == 0:
        parser.error("--blocks must be odd and at least 3 (co-execution first and last)")
    if args.block < 2:
        parser.error("--block must be at least 2 (its first iteration is not timed)")
    rows = []
    print(f"{'program':<18} {'eager/coexec':>12} {'range':>13} {'pairs':>5} {'coexec ms':>9} "
          f"{'eager ms':>9}  auto chose")
    for name in args.programs.split(","):
        row = run_one(name, args.blocks, args.block, extra)
        rows.append(row)
        if "skipped" in row:
            print(f"{name:<18} skipped: {row['skipped']}")
            continue
        print(f"{name:<18} {row['ratio_median']:11.2f}x {row['ratio_min']:6.2f}-{row['ratio_max']:<5.2f} "
              f"{row['pairs']:5d} {row['coexec_ms']:9.1f} {row['eager_ms']:9.1f}  {row['chosen']}",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
