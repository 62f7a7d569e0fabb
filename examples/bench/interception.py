"""Per-op cost of interception, from Python, eager against intercepted, in one run:

  eager        the op as PyTorch runs it
  counted      intercepted at the dispatcher, the observer only counts
  recorded     intercepted, the observer also keeps the op's name

for an 8-element `a + b` and a 16x16 `a @ b` on one CPU thread.

    python examples/bench/interception.py [--iters 20000] [--repeats 15] [--json out.json]

Each repeat times --iters calls of every configuration in turn (alternating, so
drift hits all alike); the median over repeats is kept, in µs per op.
"""
import argparse
import json
import statistics
import time

import torch

from terra import _C

OPS = {
    "add8": (lambda: (torch.randn(8), torch.randn(8)), lambda a, b: a + b),
    "mm16": (lambda: (torch.randn(16, 16), torch.randn(16, 16)), lambda a, b: a @ b),
}
MODES = ["eager", "counted", "recorded"]


def time_per_op(fn, a, b, iters, mode):
    if mode != "eager":
        _C._intercept_start(keep_names=(mode == "recorded"))
    try:
        start = time.perf_counter()
        for _ in range(iters):
            fn(a, b)
        elapsed = time.perf_counter() - start
        if mode != "eager":
            assert _C._intercept_count() == iters, "interception missed ops"
    finally:
        _C._intercept_stop()
    return elapsed / iters * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    results = {}
    for name, (make, fn) in OPS.items():
        a, b = make()
        for mode in MODES:  # warm up, and register the kernels once
            time_per_op(fn, a, b, 1000, mode)
        samples = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode in MODES:
                samples[mode].append(time_per_op(fn, a, b, args.iters, mode))
        med = {mode: statistics.median(samples[mode]) for mode in MODES}
        results[name] = {
            **{f"{mode}_us": round(med[mode], 3) for mode in MODES},
            "counted_ratio": round(med["counted"] / med["eager"], 3),
            "recorded_ratio": round(med["recorded"] / med["eager"], 3),
        }

    print(f"torch {torch.__version__}, 1 thread, median of {args.repeats} x {args.iters} ops")
    print(f"{'op':6} {'eager µs':>9} {'counted µs':>11} {'recorded µs':>12} {'cnt x':>6} {'rec x':>6}")
    for name, r in results.items():
        print(f"{name:6} {r['eager_us']:9.3f} {r['counted_us']:11.3f} {r['recorded_us']:12.3f} "
              f"{r['counted_ratio']:6.2f} {r['recorded_ratio']:6.2f}")
    print("registration:", _C._intercept_registration())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "ops": results}, f, indent=1)


if __name__ == "__main__":
    main()
