"""Per-op cost of interception, from Python, eager against intercepted, in one run:

  eager        the op as PyTorch runs it
  counted      intercepted at the dispatcher, the observer only counts
  recorded     intercepted, the observer also keeps the op's name
  traced       terra.enable("trace"): every op becomes a TraceGraph node with
               its identity (operator, arguments, input metadata, Python
               frames), value flow and sync points; an iteration ends every
               --iteration-ops ops and is merged into the TraceGraph
  validated    the validation path co-execution uses (runtime/validator.h):
               the op's identity hash, computed without allocating, checked
               against the TraceGraph's expected next node

for an 8-element `a + b` and a 16x16 `a @ b` on one CPU thread, called from
--depth nested Python functions (a model's forward is some 5-15 deep).

    python examples/bench/interception.py [--iters 20000] [--repeats 15] [--depth 8]
                                          [--iteration-ops 100] [--json out.json]

Each repeat times --iters calls of every configuration in turn (alternating, so
drift hits all alike); the median over repeats is kept, in µs per op.
"""
import argparse
import json
import statistics
import time

import torch

import terra
from terra import _C, _tracing

OPS = {
    "add8": (lambda: (torch.randn(8), torch.randn(8)), lambda a, b: a + b),
    "mm16": (lambda: (torch.randn(16, 16), torch.randn(16, 16)), lambda a, b: a @ b),
}
MODES = ["eager", "counted", "recorded", "traced", "validated"]


def nest(fn, depth):
    """fn called through `depth` Python frames, as a model's layers call ops."""
    if depth == 0:
        return fn
    inner = nest(fn, depth - 1)
    return lambda a, b: inner(a, b)


def run_chunks(fn, a, b, iters, chunk, boundary):
    """iters calls of fn, with boundary() after every chunk calls."""
    done = 0
    while done < iters:
        n = min(chunk, iters - done)
        for _ in range(n):
            fn(a, b)
        boundary()
        done += n


def time_traced(fn, a, b, iters, chunk):
    terra.enable("trace")
    try:
        start = time.perf_counter()
        run_chunks(fn, a, b, iters, chunk, terra.iteration)
        elapsed = time.perf_counter() - start
        assert terra.stats()["ops"] >= iters, "tracing missed ops"
    finally:
        terra.disable()
    return elapsed / iters * 1e6


def time_validated(fn, a, b, iters, chunk):
    tracer = _C._Tracer(_tracing._library_prefixes(), "")
    # Record two iterations, then validate; one call site for all phases, so
    # the ops come from the same Python frames.
    for phase in ("record", "record", "validate"):
        if phase == "record":
            tracer.start()
            n, boundary = chunk, (lambda: tracer.end_iteration(True))
        else:
            tracer.validate_start()
            n, boundary = iters, tracer.validate_iteration
        start = time.perf_counter()
        run_chunks(fn, a, b, n, chunk, boundary)
        elapsed = time.perf_counter() - start
        if phase == "record":
            tracer.stop()
    counts = tracer.validate_stop()
    assert counts["diverged"] == 0 and counts["matched"] == iters, counts
    return elapsed / iters * 1e6


def time_per_op(fn, a, b, iters, mode, chunk=100):
    if mode == "traced":
        return time_traced(fn, a, b, iters, chunk)
    if mode == "validated":
        return time_validated(fn, a, b, iters, chunk)
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
    parser.add_argument("--depth", type=int, default=8, help="Python frames between the loop and the op")
    parser.add_argument("--iteration-ops", type=int, default=100, help="ops per traced iteration")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    results = {}
    for name, (make, op) in OPS.items():
        a, b = make()
        fn = nest(op, args.depth)
        for mode in MODES:  # warm up, and register the kernels once
            time_per_op(fn, a, b, 1000, mode, args.iteration_ops)
        samples = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode in MODES:
                samples[mode].append(time_per_op(fn, a, b, args.iters, mode, args.iteration_ops))
        med = {mode: statistics.median(samples[mode]) for mode in MODES}
        eager = med["eager"]
        results[name] = {
            **{f"{mode}_us": round(med[mode], 3) for mode in MODES},
            **{f"{mode}_ratio": round(med[mode] / eager, 3) for mode in MODES[1:]},
            # What validating adds to an op, as a share of the eager op: the
            # cost co-execution puts on the Python thread instead of the op.
            "validation_alone_of_eager": round((med["validated"] - eager) / eager, 3),
        }

    print(f"torch {torch.__version__}, 1 thread, depth {args.depth}, "
          f"median of {args.repeats} x {args.iters} ops")
    print(f"{'op':6} {'eager µs':>9} " + " ".join(f"{m + ' x':>11}" for m in MODES[1:])
          + f" {'validation alone':>17}")
    for name, r in results.items():
        print(f"{name:6} {r['eager_us']:9.3f} " + " ".join(f"{r[m + '_ratio']:11.2f}" for m in MODES[1:])
              + f" {r['validation_alone_of_eager']:16.2f}x")
    print("registration:", _C._intercept_registration())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "depth": args.depth, "ops": results}, f, indent=1)


if __name__ == "__main__":
    main()
