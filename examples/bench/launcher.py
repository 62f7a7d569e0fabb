"""Launcher and control-plane figures, each the median of --repeats runs:

  rendezvous   time from `import terra` to every rank having joined (the slowest rank)
  death_exit   time from a rank's SIGKILL to terrarun's exit
  hang_exit    time from a rank's SIGSTOP to terrarun's exit (with --heartbeat-timeout)
  startup      `terrarun -np 1 python -c pass` against plain `python -c pass`

    python examples/bench/launcher.py [--ranks 4] [--repeats 5] [--json out.json]
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RENDEZVOUS = """
import terra, terra.distributed as d
print("rendezvous", d._group._group.rendezvous_s)
"""
DEATH = """
import os, signal, sys, time
import terra, terra.distributed as d
d.barrier()
if d.rank() == d.world_size() - 1:
    open(sys.argv[1], "w").write(repr(time.time()))
    os.kill(os.getpid(), signal.{sig})
time.sleep(120)
"""


def script(text):
    f = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    f.write(text)
    f.close()
    return f.name


def rendezvous(terrarun, ranks):
    out = subprocess.run([terrarun, "-np", str(ranks), script(RENDEZVOUS)], capture_output=True,
                         text=True, check=True).stdout
    return max(float(l.split()[-1]) for l in out.splitlines() if "rendezvous" in l)


def stop_latency(terrarun, ranks, sig, extra=()):
    marker = tempfile.mktemp()
    subprocess.run([terrarun, "-np", str(ranks), *extra, script(DEATH.format(sig=sig)), marker],
                   capture_output=True, text=True)
    ended = time.time()
    return ended - float(open(marker).read())


def startup(cmd, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hang-timeout", type=float, default=2.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    terrarun = shutil.which("terrarun")
    if terrarun is None:
        sys.exit("terrarun is not on PATH: run scripts/build.sh")
    r = args.repeats
    results = {
        "ranks": args.ranks,
        "rendezvous_s": statistics.median(rendezvous(terrarun, args.ranks) for _ in range(r)),
        "death_exit_s": statistics.median(
            stop_latency(terrarun, args.ranks, "SIGKILL") for _ in range(r)),
        "hang_exit_s": statistics.median(
            stop_latency(terrarun, args.ranks, "SIGSTOP",
                         ["--heartbeat-timeout", str(args.hang_timeout), "--kill-grace", "1"])
            for _ in range(r)),
        "hang_timeout_s": args.hang_timeout,
        "startup_terrarun_s": startup([terrarun, "-np", "1", sys.executable, "-c", "pass"], r),
        "startup_python_s": startup([sys.executable, "-c", "pass"], r),
    }
    for k, v in results.items():
        print(f"{k:20s} {v:.4f}" if isinstance(v, float) else f"{k:20s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
