#!/usr/bin/env python3
"""Checks the dependency direction of docs/architecture.md on every include.

  runtime/base   <- nothing of ours
  graph          <- runtime/base (c10 core types allowed, no ATen kernels)
  comm           <- runtime/base
  runtime        <- runtime/base, graph, comm
  launcher       <- runtime/base, comm/control   (and never Torch)
  python, tests, examples: anything

With --binary FILE it also checks that FILE (terrarun) links no Torch library.
Exits non-zero listing every violation.
"""
import argparse
import pathlib
import re
import subprocess
import sys

OURS = ("runtime/", "graph/", "comm/", "launcher/", "python/")
ALLOWED = [  # (folder, allowed include prefixes), most specific first
    ("runtime/base/", ("runtime/base/",)),
    ("comm/control/", ("runtime/base/", "comm/control/")),
    ("comm/", ("runtime/base/", "comm/")),
    ("graph/", ("runtime/base/", "graph/")),
    ("runtime/", ("runtime/", "graph/", "comm/")),
    ("launcher/", ("runtime/base/", "comm/control/", "launcher/")),
]
NO_TORCH = ("runtime/base/", "comm/", "launcher/")
TORCH_HEADERS = ("torch/", "ATen/", "c10/", "caffe2/")
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)


def check_sources(root):
    problems = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".h", ".cc", ".cu", ".cuh", ".cpp", ".hpp"):
            continue
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("build/", "tests/", "examples/", "python/", "third_party/", ".")):
            continue
        rule = next((r for r in ALLOWED if rel.startswith(r[0])), None)
        if rule is None:
            continue
        text = path.read_text(errors="replace")
        for m in INCLUDE.finditer(text):
            inc = m.group(1)
            line = text.count("\n", 0, m.start()) + 1
            if inc.startswith(OURS) and not inc.startswith(rule[1]):
                problems.append(f"{rel}:{line}: includes {inc}, but {rule[0]} may only include "
                                f"{', '.join(rule[1])}")
            if rel.startswith(NO_TORCH) and inc.startswith(TORCH_HEADERS):
                problems.append(f"{rel}:{line}: includes {inc}, but {rule[0]} must not use Torch")
    return problems


def check_binary(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    bad = [l.strip() for l in out.splitlines() if re.search(r"lib(torch|c10)", l)]
    return [f"{binary} links Torch: {l}" for l in bad]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, type=pathlib.Path)
    parser.add_argument("--binary")
    args = parser.parse_args()
    problems = check_binary(args.binary) if args.binary else check_sources(args.root)
    for p in problems:
        print(p)
    print(f"{'FAILED' if problems else 'ok'}: {len(problems)} layering violation(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
