#!/usr/bin/env python3
"""Runs the program suite under several execution modes, side by side.

    examples/bench/run.py --programs all --modes eager,terra,coexec,compile,jit \
        --iters 20 --repeats 3 --json out.json --plot out.png

Each (program, mode, repeat) runs in its own Python process, so that no
mode's state (compiled caches, RNG, threads) leaks into another. The
programs are never edited: the harness passes options that
examples/programs/common.py understands and reads back only the result JSON
and the saved parameters (stdout may be prefixed by a launcher).

Modes:
  eager    plain PyTorch, the reference for correctness and speed.
  terra    the program in eager mode under `terrarun -np 1` (Terra's default
           mode); reported as not available when no `terrarun` is on PATH.
  coexec   the same under `terrarun -np 1 --mode coexec`, with Terra's stats
           written at exit (TERRA_STATS_JSON) and read back: co-executed
           iterations, fallbacks, ops submitted, the first divergence, and the
           time split (see coexec_split).
  compile  the program's models wrapped with torch.compile.
  jit      the program's models passed to torch.jit.script (trace where
           scripting fails).

Per program and mode the harness reports throughput (iterations/s over the
measured iterations, median over repeats; warm-up and compilation excluded
and reported apart as compile_s), correctness against eager (final loss and
every saved parameter and buffer: max abs difference, bit-identical or not)
and coverage (ran, or failed with the error's first line; graph breaks from
torch._dynamo.explain; TorchScript method). A failure in one mode is
reported and the run goes on.
"""

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS_DIR = os.path.normpath(os.path.join(HERE, "..", "programs"))
MODES = ("eager", "terra", "coexec", "compile", "jit")
TERRA_MODES = ("terra", "coexec")  # run through the launcher
SCHEMA_VERSION = 1


def discover_programs():
    names = []
    for entry in sorted(os.listdir(PROGRAMS_DIR)):
        if entry.endswith(".py") and entry != "common.py" and not entry.startswith("_"):
            names.append(entry[:-3])
    return names


def resolve_programs(spec):
    """Program names or paths from "all" or a comma-separated list."""
    if spec == "all":
        return [(name, os.path.join(PROGRAMS_DIR, name + ".py")) for name in discover_programs()]
    resolved = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if os.path.sep in item or item.endswith(".py"):
            path = os.path.abspath(item)
            resolved.append((os.path.splitext(os.path.basename(path))[0], path))
        else:
            resolved.append((item, os.path.join(PROGRAMS_DIR, item + ".py")))
    return resolved


def error_line(stderr):
    """The first line of the exception that ended a Python process."""
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.strip()]
    pattern = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure|Unsupported)\w*)(:.*)?$")
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Traceback (most recent call last)"):
            # The exception line is the first unindented line after the frames.
            for ln in lines[i + 1:]:
                if not ln.startswith(" ") and pattern.match(ln):
                    return ln.strip()
            break
    for ln in reversed(lines):
        if pattern.match(ln.strip()):
            return ln.strip()
    return lines[-1].strip() if lines else "no error output"


def run_once(program_path, mode, repeat, args, workdir, terrarun):
    """One process; returns (result dict or None, error string or None, wall seconds)."""
    stem = os.path.splitext(os.path.basename(program_path))[0]
    tag = f"{stem}.{mode}.{repeat}"
    result_json = os.path.join(workdir, tag + ".json")
    params = os.path.join(workdir, tag + ".pt")
    stats_json = os.path.join(workdir, tag + ".terra_stats.json")
    prog_args = ["--mode", "eager" if mode in TERRA_MODES else mode,
                 "--iters", str(args.iters), "--warmup", str(args.warmup),
                 "--size", args.size, "--device", args.device, "--seed", str(args.seed),
                 "--threads", str(args.threads),
                 "--result-json", result_json, "--save-params", params]
    if mode == "terra":
        cmd = shlex.split(terrarun) + [program_path] + prog_args
    elif mode == "coexec":
        cmd = shlex.split(terrarun) + ["--mode", "coexec", program_path] + prog_args
    else:
        cmd = [sys.executable, program_path] + prog_args
    env = dict(os.environ, PYTHONHASHSEED="0", TERRA_BENCH_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads) if args.threads > 0 else os.environ.get("OMP_NUM_THREADS", ""))
    if not env["OMP_NUM_THREADS"]:
        del env["OMP_NUM_THREADS"]
    # Inductor's on-disk cache is fresh for each harness run, so that the
    # first repeat's compile_s is a cold compilation.
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(workdir, "inductor_cache")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PROGRAMS_DIR, os.environ.get("PYTHONPATH")]))
    env.pop("TERRA_STATS_JSON", None)
    if mode == "coexec":
        env["TERRA_STATS_JSON"] = stats_json
        if os.path.exists(stats_json):  # a kept workdir: never read an earlier run's stats
            os.remove(stats_json)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {args.timeout} s", time.perf_counter() - start
    except OSError as error:
        return None, f"{type(error).__name__}: {error}", time.perf_counter() - start
    wall = time.perf_counter() - start
    if args.verbose:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
    if proc.returncode != 0:
        return None, f"exit {proc.returncode}: {error_line(proc.stderr)}", wall
    if not os.path.exists(result_json):
        return None, "no result JSON written (the program does not use common.finish?)", wall
    with open(result_json) as f:
        result = json.load(f)
    if mode == "coexec":
        result["terra_stats"] = read_terra_stats(stats_json)
    return result, None, wall


def read_terra_stats(path):
    """Terra's stats() as written at exit (TERRA_STATS_JSON), or None."""
    try:
        with open(path) as f:
            stats = json.load(f)
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) else None


def _number(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def coexec_split(result):
    """Co-execution figures of one coexec process, or None when Terra wrote no stats.

    Over the whole run: the program thread's time is the wall time of all
    iterations (warm-up and measured) minus the time it waited at fetches
    ("python_s"); the executor thread was busy "executor_busy_s"; the program
    thread waited "fetch_wait_s". Terra counts fetch waits and executor time
    outside the iterations too (set-up, the final save), so python_s is
    clamped at zero.
    """
    c = (result.get("terra_stats") or {}).get("coexec")
    if not isinstance(c, dict):
        return None
    busy, wait = _number(c.get("executor_busy_s")), _number(c.get("fetch_wait_s"))
    times = (result.get("warmup_times_s") or []) + (result.get("iter_times_s") or [])
    iter_s = sum(t for t in times if _number(t) is not None)
    out = {"iterations": c.get("iterations"), "fallbacks": c.get("fallbacks"),
           "submitted": c.get("submitted"), "fetches": c.get("fetches"),
           "first_divergence": c.get("first_divergence") or None, "phase": c.get("phase"),
           "iter_s": iter_s, "python_s": None, "executor_busy_s": busy, "fetch_wait_s": wait,
           "backward_replayed": c.get("backward_replayed"),
           # Where the program's thread waited longest (Terra lists them by total wait).
           "costliest_waits": [w for w in (c.get("fetch_points") or [])
                               if isinstance(w, dict) and _number(w.get("wait_s")) is not None][:2]}
    if wait is not None:
        out["python_s"] = max(0.0, iter_s - wait)
    return out


def summarize_coexec(results):
    """The coexec row's figures: the median over repeats of each count and time,
    and the shares (%) of python_s, executor_busy_s and fetch_wait_s in their sum."""
    splits = [s for s in (coexec_split(r) for r in results) if s is not None]
    if not splits:
        return None

    def median_of(key):
        values = [s[key] for s in splits if _number(s[key]) is not None]
        return statistics.median(values) if values else None

    out = {key: median_of(key) for key in ("iterations", "fallbacks", "submitted", "fetches",
                                           "iter_s", "python_s", "executor_busy_s", "fetch_wait_s",
                                           "backward_replayed")}
    out["costliest_waits"] = next((s["costliest_waits"] for s in splits if s["costliest_waits"]), [])
    out["first_divergence"] = next((s["first_divergence"] for s in splits if s["first_divergence"]), None)
    out["phase"] = splits[0]["phase"]
    out["repeats_with_stats"] = len(splits)
    parts = [out["python_s"], out["executor_busy_s"], out["fetch_wait_s"]]
    total = sum(parts) if None not in parts else 0.0
    out["shares_pct"] = ({"python": 100.0 * parts[0] / total, "executor_busy": 100.0 * parts[1] / total,
                          "fetch_wait": 100.0 * parts[2] / total} if total > 0 else None)
    return out


def compare(reference, candidate):
    """Max abs differences of final loss and saved tensors, and bit-identity."""
    import torch

    out = {"loss_abs_diff": None, "param_max_abs_diff": None, "bit_identical": False, "note": None}
    if reference.get("final_loss") is not None and candidate.get("final_loss") is not None:
        a, b = reference["final_loss"], candidate["final_loss"]
        out["loss_abs_diff"] = abs(a - b) if math.isfinite(a) and math.isfinite(b) else float("inf")
    ref = torch.load(reference["params_file"], map_location="cpu")
    cand = torch.load(candidate["params_file"], map_location="cpu")
    identical = reference.get("final_loss") == candidate.get("final_loss")
    worst = 0.0
    flat_ref = {(m, k): v for m, sd in ref.items() for k, v in sd.items()}
    flat_cand = {(m, k): v for m, sd in cand.items() for k, v in sd.items()}
    if set(flat_ref) != set(flat_cand):
        out["note"] = f"state_dict keys differ ({len(set(flat_ref) ^ set(flat_cand))} keys)"
        identical = False
    for key in set(flat_ref) & set(flat_cand):
        x, y = flat_ref[key], flat_cand[key]
        if x.shape != y.shape:
            out["note"] = f"shape differs for {key[0]}.{key[1]}"
            identical = False
            worst = float("inf")
            continue
        if not torch.equal(x, y):
            identical = False
            if x.is_floating_point() or y.is_floating_point():
                diff = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
                worst = max(worst, diff if math.isfinite(diff) else float("inf"))
            else:
                worst = max(worst, float((x.long() - y.long()).abs().max().item()))
    out["param_max_abs_diff"] = worst
    out["bit_identical"] = bool(identical)
    return out


def coverage_of(result):
    cov = {}
    if result.get("explain"):
        cov["graph_count"] = sum(e.get("graph_count", 0) for e in result["explain"])
        cov["graph_break_count"] = sum(e.get("graph_break_count", 0) for e in result["explain"])
        reasons = []
        for e in result["explain"]:
            if "error" in e:
                reasons.append(f"{e['model']}: explain failed: {e['error']}")
            for r in e.get("break_reasons", []):
                reasons.append(f"{e['model']}: {r}")
        cov["break_reasons"] = reasons
    run_stats = result.get("dynamo_run")
    if run_stats:
        cov["unique_graphs_compiled"] = run_stats["unique_graphs"]
        cov["graph_breaks_in_run"] = run_stats["graph_breaks"]
        cov["dynamo_gave_up"] = run_stats["unimplemented"]
    if result.get("jit"):
        cov["jit"] = result["jit"]
    return cov


def empty_row(name, mode):
    return {"program": name, "mode": mode, "status": "ok", "error": None,
            "iters_per_s": None, "iters_per_s_repeats": [], "ms_per_iter": None,
            "speedup_vs_eager": None, "compile_s": None, "final_loss": None,
            "correctness": None, "coverage": {}, "coexec": None, "wall_s": 0.0}


def run_mode(name, path, mode, args, workdir, terrarun):
    row = empty_row(name, mode)
    if mode in TERRA_MODES and not terrarun:
        row["status"], row["error"] = "unavailable", "not available (terrarun not on PATH)"
        return row, []
    results = []
    repeats = args.compile_repeats if (mode == "compile" and args.compile_repeats) else args.repeats
    for repeat in range(repeats):
        result, error, wall = run_once(path, mode, repeat, args, workdir, terrarun)
        row["wall_s"] += wall
        if error:
            row["status"], row["error"] = "failed", error
            break
        results.append(result)
    if row["status"] == "ok" and results:
        ips = [r["iters_per_s"] for r in results if r.get("iters_per_s")]
        row["iters_per_s_repeats"] = ips
        if ips:
            row["iters_per_s"] = statistics.median(ips)
            row["ms_per_iter"] = 1000.0 / row["iters_per_s"]
        row["compile_s"] = results[0]["compile_s"]  # cold compilation caches
        row["final_loss"] = results[0]["final_loss"]
        row["coverage"] = coverage_of(results[0])
        if mode == "coexec":
            row["coexec"] = summarize_coexec(results)
    return row, results


SPLIT_KEYS = ("python", "executor_busy", "fetch_wait")


def has_coexec(rows):
    return any(r["mode"] == "coexec" for r in rows)


def split_cells(row, missing):
    """The three shares (%) of a coexec row as text; "n/a" without Terra stats."""
    if row["mode"] != "coexec":
        return [missing] * 3
    shares = (row.get("coexec") or {}).get("shares_pct")
    if not shares:
        return ["n/a"] * 3
    return [f"{shares[k]:.0f}" for k in SPLIT_KEYS]


def coexec_note(row):
    c = row.get("coexec")
    if not c:
        return "n/a (no Terra stats)"

    def n(v, fmt=".0f"):
        return format(v, fmt) if isinstance(v, (int, float)) else "n/a"

    return (f"co-executed {n(c['iterations'])} it, {n(c['fallbacks'])} fallback(s), "
            f"{n(c['submitted'])} ops submitted; Python {n(c['python_s'], '.3f')} s, "
            f"executor busy {n(c['executor_busy_s'], '.3f')} s, fetch wait {n(c['fetch_wait_s'], '.3f')} s")


def format_table(rows, modes):
    split = has_coexec(rows)
    header = f"{'program':<18} {'mode':<8} {'it/s':>8} {'ms/it':>8} {'speedup':>8} " \
             + (f"{'py %':>5} {'exec %':>6} {'wait %':>6} " if split else "") \
             + f"{'compile s':>9} {'loss diff':>10} {'param diff':>10} {'bitexact':>8}  coverage / error"
    lines = [header, "-" * len(header)]
    for row in rows:
        c = row["correctness"] or {}

        def num(v, fmt):
            width = int(fmt.split(".")[0] or 0)
            return format(v, fmt) if isinstance(v, (int, float)) else "-".rjust(width)

        note = ""
        if row["status"] != "ok":
            note = f"{row['status'].upper()}: {row['error']}"
        else:
            cov = row["coverage"]
            if "graph_count" in cov:
                note = f"graphs {cov['graph_count']}, breaks {cov['graph_break_count']}"
                if cov.get("unique_graphs_compiled") is not None:
                    note += f", compiled {cov['unique_graphs_compiled']}"
            if cov.get("jit"):
                note = ", ".join(f"{j['model']}: {j['method']}" for j in cov["jit"])
            if row["mode"] == "coexec":
                note = coexec_note(row)
                if (row.get("coexec") or {}).get("first_divergence"):
                    note += f"; first divergence: {row['coexec']['first_divergence']}"
        bit = "-" if not c else ("yes" if c.get("bit_identical") else "no")
        cells = ""
        if split:
            py, ex, wait = split_cells(row, "-")
            cells = f"{py:>5} {ex:>6} {wait:>6} "
        lines.append(f"{row['program']:<18} {row['mode']:<8} {num(row['iters_per_s'], '8.2f')} "
                     f"{num(row['ms_per_iter'], '8.1f')} {num(row['speedup_vs_eager'], '7.2f')}{'x' if row['speedup_vs_eager'] else ' '} "
                     f"{cells}{num(row['compile_s'], '9.1f')} {num(c.get('loss_abs_diff'), '10.2e')} "
                     f"{num(c.get('param_max_abs_diff'), '10.2e')} {bit:>8}  {note}")
    return "\n".join(lines)


def format_markdown(report):
    """The results table and the coverage details, as Markdown."""

    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "–"

    split = has_coexec(report["results"])
    out = ["| program | mode | it/s | ms/it | speedup | "
           + ("Python % | executor busy % | fetch wait % | " if split else "")
           + "compile s | loss diff | param diff | bit-identical | coverage |",
           "|---|---|--:|--:|--:|" + ("--:|--:|--:|" if split else "") + "--:|--:|--:|:-:|---|"]
    for r in report["results"]:
        c = r["correctness"] or {}
        cov = r["coverage"]
        if r["status"] != "ok":
            note = f"**{r['status']}**: {r['error']}"
        elif "graph_count" in cov:
            note = f"{cov['graph_count']} graph(s), {cov['graph_break_count']} break(s) at prepare"
            if cov.get("unique_graphs_compiled") is not None:
                note += f"; {cov['unique_graphs_compiled']} graphs compiled in the run"
            if cov.get("dynamo_gave_up"):
                note += "; " + "; ".join(k for k in cov["dynamo_gave_up"])
        elif cov.get("jit"):
            note = ", ".join(f"{j['model']}: {j['method']}" for j in cov["jit"])
        elif r["mode"] == "coexec":
            note = coexec_note(r)
        else:
            note = "ran"
        bit = "–" if not c else ("yes" if c.get("bit_identical") else "no")
        speed = f"{r['speedup_vs_eager']:.2f}×" if r["speedup_vs_eager"] else "–"
        cells = "".join(f"| {cell} " for cell in split_cells(r, "–")) if split else ""
        out.append(f"| {r['program']} | {r['mode']} | {num(r['iters_per_s'], '.2f')} | {num(r['ms_per_iter'], '.1f')} "
                   f"| {speed} {cells}| {num(r['compile_s'], '.1f')} | {num(c.get('loss_abs_diff'), '.2e')} "
                   f"| {num(c.get('param_max_abs_diff'), '.2e')} | {bit} | {note} |")
    details = []
    for r in report["results"]:
        cov = r["coverage"]
        lines = []
        for reason in cov.get("break_reasons", []):
            lines.append(f"  - break at prepare: {reason}")
        for reason, count in (cov.get("graph_breaks_in_run") or {}).items():
            lines.append(f"  - break during the run (×{count}): {reason}")
        for reason, count in (cov.get("dynamo_gave_up") or {}).items():
            lines.append(f"  - gave up (×{count}): {reason}")
        for j in cov.get("jit", []):
            if j.get("script_error"):
                lines.append(f"  - {j['model']}: torch.jit.script failed, traced instead: {j['script_error']}")
        if (r.get("coexec") or {}).get("first_divergence"):
            lines.append(f"  - first divergence (fallback): {r['coexec']['first_divergence']}")
        if isinstance((r.get("coexec") or {}).get("backward_replayed"), (int, float)):
            lines.append(f"  - backwards replayed as one segment: {r['coexec']['backward_replayed']:.0f}")
        for w in (r.get("coexec") or {}).get("costliest_waits") or []:
            lines.append(f"  - waited {w['wait_s']:.3f} s ({w.get('count', '?')}×) at {w.get('where')}: "
                         f"{w.get('what')}")
        if lines:
            details.append(f"- **{r['program']} / {r['mode']}**")
            details.extend(lines)
    if details:
        out += ["", "Coverage details:", ""] + details
    return "\n".join(out)


def plot(report, path):
    """Bar chart of speedups over eager, one group per program, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, NullFormatter

    rows = report["results"]
    programs = list(dict.fromkeys(r["program"] for r in rows))
    modes = [m for m in report["config"]["modes"] if m != "eager"]
    colors = {"terra": "#2ca02c", "coexec": "#d62728", "compile": "#1f77b4", "jit": "#ff7f0e"}
    by_key = {(r["program"], r["mode"]): r for r in rows}
    speedups = [r["speedup_vs_eager"] for r in rows if r["speedup_vs_eager"]]
    low = min([0.5] + speedups) / 2.0
    high = max([2.0] + speedups) * 1.6
    fig, ax = plt.subplots(figsize=(max(9, 1.25 * len(programs) + 2), 6))
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        for i, prog in enumerate(programs):
            r = by_key.get((prog, mode))
            if r is None:
                continue
            x = i + (j - (len(modes) - 1) / 2) * width
            if r["status"] == "ok" and r["speedup_vs_eager"]:
                s = r["speedup_vs_eager"]
                exact = (r["correctness"] or {}).get("bit_identical")
                ax.bar(x, s, width * 0.9, color=colors.get(mode, "grey"), bottom=0)
                label = f"{s:.2f}" if s >= 0.095 else f"{s:.3f}"
                ax.text(x, s * 1.06, label + ("=" if exact else ""), ha="center", va="bottom",
                        fontsize=7, rotation=90)
            else:
                label = "n/a" if r["status"] == "unavailable" else "FAILED"
                ax.text(x, low * 1.15, label, ha="center", va="bottom", fontsize=8, rotation=90,
                        color="red" if label == "FAILED" else "grey", fontweight="bold")
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20) if low <= t <= high]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.set_yticklabels([f"{t:g}×" for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.axhline(1.0, color="black", linewidth=1.2, linestyle="--")
    ax.set_xticks(range(len(programs)))
    ax.set_xticklabels(programs, rotation=20, ha="right")
    ax.set_ylabel("speedup over eager PyTorch (higher is better, log scale)")
    env = report["environment"]
    ax.set_title(f"Throughput relative to eager — {report['config']['device']}, {env['threads']} thread(s), "
                 f"torch {env['torch']}\nlabels: speedup; '=' bit-identical to eager; dashed line: eager",
                 fontsize=10)
    handles = [Patch(color=colors.get(m, "grey"), label=m) for m in modes]
    ax.legend(handles=handles, loc="upper right", fontsize=9, ncol=len(modes))
    ax.grid(axis="y", alpha=0.3, which="major")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", default="all", help='"all" or comma-separated names or paths')
    p.add_argument("--modes", default="eager,terra,coexec,compile,jit")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile-repeats", type=int, default=0,
                   help="repeats for mode compile, whose processes are dominated by compilation (0: --repeats)")
    p.add_argument("--size", choices=["tiny", "default"], default="default")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per program process (0: default)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    p.add_argument("--terrarun", default=None,
                   help='launcher command for modes terra and coexec (default: "terrarun -np 1" if on PATH)')
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--markdown", default=None, help="write the table as Markdown")
    p.add_argument("--from-json", default=None, help="re-render the table, Markdown and plot of an earlier run")
    p.add_argument("--keep", default=None, help="keep per-process results and parameters in this folder")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    return args


def emit(report, args):
    print(format_table(report["results"], report["config"]["modes"]))
    if args.json and not args.from_json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_markdown(report) + "\n")
    if args.plot:
        plot(report, args.plot)


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            emit(json.load(f), args)
        return 0
    terrarun = args.terrarun or ("terrarun -np 1" if shutil.which("terrarun") else None)
    programs = resolve_programs(args.programs)
    workdir = args.keep or tempfile.mkdtemp(prefix="terra_bench_")
    os.makedirs(workdir, exist_ok=True)
    import torch

    report = {
        "schema_version": SCHEMA_VERSION,
        "config": {"programs": [n for n, _ in programs], "modes": args.modes, "iters": args.iters,
                   "warmup": args.warmup, "repeats": args.repeats,
                   "compile_repeats": args.compile_repeats or args.repeats, "size": args.size,
                   "device": args.device, "seed": args.seed},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "threads": args.threads, "terrarun": terrarun},
        "results": [],
    }
    try:
        for name, path in programs:
            reference = None
            for mode in args.modes:
                print(f"[bench] {name} / {mode} ...", file=sys.stderr, flush=True)
                if not os.path.exists(path):
                    row = dict(empty_row(name, mode), status="failed", error=f"no such program: {path}")
                    report["results"].append(row)
                    continue
                row, results = run_mode(name, path, mode, args, workdir, terrarun)
                if mode == "eager" and results:
                    reference = results[0]
                    if len(results) > 1:  # eager against eager in another process
                        row["correctness"] = compare(results[0], results[1])
                elif reference is not None and results:
                    try:
                        row["correctness"] = compare(reference, results[0])
                    except Exception as error:  # reported, never fatal
                        row["correctness"] = {"loss_abs_diff": None, "param_max_abs_diff": None,
                                              "bit_identical": False, "note": f"compare failed: {error}"}
                report["results"].append(row)
            eager_row = next((r for r in report["results"] if r["program"] == name and r["mode"] == "eager"), None)
            for r in report["results"]:
                if r["program"] == name and r["iters_per_s"] and eager_row and eager_row["iters_per_s"]:
                    r["speedup_vs_eager"] = r["iters_per_s"] / eager_row["iters_per_s"]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    emit(report, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
