"""Shared plumbing for the program suite: options, seeding, timing, results.

Every program in this folder is a plain imperative PyTorch training program.
This module holds the few lines they all repeat, so that the harness
(examples/bench/run.py) can drive them without editing them:

    run = common.start(__doc__)                  # options, seeds, threads
    model = Net().to(run.device)
    model = run.prepare(model, example_inputs)   # the only place modes differ
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for it in run.steps():                       # times each iteration
        loss = ...
        run.log(loss)                            # prints "iter I loss L"
    run.finish(model=model)                      # result JSON + parameters

Modes (--mode): "eager" leaves the model alone; "compile" wraps it with
torch.compile and records torch._dynamo.explain for its forward; "jit" tries
torch.jit.script and, where scripting fails, torch.jit.trace, the way a user
would, and records which one was used and why scripting failed.

Timing contract: the first --warmup iterations are timed apart (they hold
compilation); the rest are the measured iterations. On CUDA each iteration
ends with a synchronize. The result JSON is the only output the harness
reads; stdout may be prefixed by a launcher.
"""

import argparse
import contextlib
import copy
import json
import math
import os
import random
import statistics
import sys
import time

import numpy as np
import torch

SCHEMA_VERSION = 1


def first_line(error):
    """The first non-empty line of an exception's message, prefixed by its type."""
    text = str(error).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _first_text_line(text):
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else "?"


def parse_args(description, argv=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--iters", type=int, default=20, help="measured iterations")
    parser.add_argument("--warmup", type=int, default=2, help="iterations run before timing")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=["tiny", "default"], default="default")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("TERRA_BENCH_THREADS", "0")),
                        help="torch.set_num_threads; 0 keeps PyTorch's default")
    parser.add_argument("--mode", choices=["eager", "compile", "jit"], default="eager")
    parser.add_argument("--result-json", default=None, help="write the result here")
    parser.add_argument("--save-params", default=None, help="torch.save final state_dicts here")
    return parser.parse_args(argv)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _preserved_state(model):
    """Runs the body, then restores RNG streams and the model's tensors.

    Tracing and explaining execute the forward once; a user's program would
    not have run it, so its side effects (RNG draws, BatchNorm statistics)
    must not change the rest of the run.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(tensors[k])


def _plain_state_dict(model):
    """state_dict with torch.compile's "_orig_mod." prefix removed, on CPU."""
    return {k.replace("_orig_mod.", ""): v.detach().cpu().clone()
            for k, v in model.state_dict().items()}


class Run:
    """One program run: options, device, per-iteration timing and results."""

    def __init__(self, program, args):
        self.program = program
        self.args = args
        self.device = torch.device(args.device)
        self.losses = []
        self.iter_times = []
        self.warmup_times = []
        self.prepare_s = 0.0
        self.explain = []
        self.jit = []
        self._iter = -1

    def prepare(self, model, example_inputs, name="model"):
        """Applies the run's mode to `model` and returns what to train."""
        mode = self.args.mode
        if mode == "eager":
            return model
        example_inputs = tuple(example_inputs)
        if mode == "compile":
            self.explain.append(self._explain(model, example_inputs, name))
            start = time.perf_counter()
            prepared = torch.compile(model)
        else:
            start = time.perf_counter()
            prepared = self._jit(model, example_inputs, name)
        self.prepare_s += time.perf_counter() - start
        return prepared

    def _explain(self, model, example_inputs, name):
        start = time.perf_counter()
        entry = {"model": name}
        try:
            with _preserved_state(model):
                out = torch._dynamo.explain(copy.deepcopy(model))(*example_inputs)
            entry["graph_count"] = out.graph_count
            entry["graph_break_count"] = out.graph_break_count
            entry["break_reasons"] = [_first_text_line(r.reason) for r in out.break_reasons]
        except Exception as error:  # reported, the run goes on compiled
            entry["error"] = first_line(error)
        torch._dynamo.reset()
        entry["explain_s"] = time.perf_counter() - start
        return entry

    def _jit(self, model, example_inputs, name):
        entry = {"model": name, "method": "script"}
        try:
            prepared = torch.jit.script(model)
        except Exception as error:
            entry["method"] = "trace"
            entry["script_error"] = first_line(error)
            try:
                with _preserved_state(model):
                    prepared = torch.jit.trace(model, example_inputs, check_trace=False, strict=False)
            except Exception as trace_error:
                raise RuntimeError(f"torch.jit.script failed ({entry['script_error']}) and torch.jit.trace "
                                   f"failed ({first_line(trace_error)})") from trace_error
        self.jit.append(entry)
        return prepared

    def steps(self):
        """Yields iteration numbers, timing each iteration's body."""
        total = self.args.warmup + self.args.iters
        cuda = self.device.type == "cuda"
        for i in range(total):
            self._iter = i
            start = time.perf_counter()
            yield i
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            (self.warmup_times if i < self.args.warmup else self.iter_times).append(elapsed)

    def log(self, loss, **extra):
        """Records and prints this iteration's loss (a tensor or a number)."""
        value = float(loss.item() if torch.is_tensor(loss) else loss)
        self.losses.append(value)
        tail = "".join(f" {k} {v:.4f}" if isinstance(v, float) else f" {k} {v}" for k, v in extra.items())
        print(f"iter {self._iter} loss {value:.6f}{tail}", flush=True)

    def finish(self, **models):
        """Saves final parameters and writes the result JSON."""
        args = self.args
        if args.save_params:
            torch.save({name: _plain_state_dict(m) for name, m in models.items()}, args.save_params)
        median = statistics.median(self.iter_times) if self.iter_times else 0.0
        compile_s = self.prepare_s + sum(max(0.0, t - median) for t in self.warmup_times)
        result = {
            "schema_version": SCHEMA_VERSION,
            "program": self.program,
            "mode": args.mode,
            "device": args.device,
            "size": args.size,
            "seed": args.seed,
            "threads": torch.get_num_threads(),
            "iters": args.iters,
            "warmup": args.warmup,
            "final_loss": self.losses[-1] if self.losses else None,
            "losses": self.losses,
            "iter_times_s": self.iter_times,
            "warmup_times_s": self.warmup_times,
            "iters_per_s": (len(self.iter_times) / sum(self.iter_times)) if self.iter_times else None,
            "prepare_s": self.prepare_s,
            "compile_s": compile_s,
            "explain": self.explain,
            "jit": self.jit,
            "dynamo_run": _dynamo_run_stats() if args.mode == "compile" else None,
            "params_file": os.path.abspath(args.save_params) if args.save_params else None,
            "torch_version": torch.__version__,
        }
        if self.losses and not math.isfinite(self.losses[-1]):
            print("warning: final loss is not finite", file=sys.stderr)
        if args.result_json:
            with open(args.result_json, "w") as f:
                json.dump(result, f, indent=1)
        return result


def _dynamo_run_stats():
    """What torch.compile did during the whole run: graphs compiled, breaks, give-ups."""
    try:
        from torch._dynamo.utils import counters
    except Exception:
        return None

    def firsts(counter):
        out = {}
        for reason, count in counter.items():
            line = _first_text_line(reason)
            out[line] = out.get(line, 0) + int(count)
        return out

    return {"unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": firsts(counters["graph_break"]),
            "unimplemented": firsts(counters["unimplemented"])}


def start(description, argv=None):
    """Parses options, seeds every RNG, fixes the thread count; returns a Run."""
    args = parse_args(description, argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    seed_everything(args.seed)
    program = os.path.splitext(os.path.basename(sys.argv[0]))[0] if argv is None else "program"
    return Run(program, args)
