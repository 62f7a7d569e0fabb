#!/usr/bin/env python3
"""Runs terra-bench-collectives (under terrarun) for CTest and checks the result.

  run_bench.py --expect-status N [--json PATH --expect-wrong {zero,one-per-row}] -- COMMAND...

Passes only if COMMAND exits with status N and, with --json, the JSON it wrote
has rows for the four collectives and the expected count of wrong elements.
Without ompi-server on PATH (terrarun needs it to connect the ranks' MPI) it
prints "[  SKIPPED ]", which CTest's SKIP_REGULAR_EXPRESSION turns into a skip.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--expect-status", type=int, required=True)
    parser.add_argument("--json")
    parser.add_argument("--expect-wrong", choices=["zero", "one-per-row"], default="zero")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if shutil.which("ompi-server") is None:
        print("[  SKIPPED ] ompi-server is not on PATH (install openmpi-bin)")
        return 0
    if args.json and os.path.exists(args.json):
        os.remove(args.json)  # never check a previous run's file
    status = subprocess.run(command, check=False).returncode
    if status != args.expect_status:
        print(f"FAILED: exit status {status}, expected {args.expect_status}")
        return 1
    if args.json:
        with open(args.json) as f:
            result = json.load(f)
        rows = result["rows"]
        ops = {row["op"] for row in rows}
        if ops != {"allreduce", "allgather", "reduce_scatter", "broadcast"}:
            print(f"FAILED: rows for {sorted(ops)}, expected the four collectives")
            return 1
        expected = 0 if args.expect_wrong == "zero" else len(rows)
        if result["wrong"] != expected or any(r["time_us"] <= 0 for r in rows):
            print(f"FAILED: {result['wrong']} wrong elements, expected {expected}")
            return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
