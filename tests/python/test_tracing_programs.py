"""The program suite under `terrarun --mode trace`: results bit-identical to eager.

Each program of examples/programs runs twice from the same seed, eagerly with
`python3 prog.py` and traced with `terrarun --mode trace prog.py` (which starts it
as `python -m terra.run prog.py`, so the program is unmodified); losses from the
result JSON and every tensor of the saved state dicts must be equal bit for bit.
Four iterations, so that tracing merges several (the first is the prologue).
The two runs of a program go concurrently (one thread each).
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from launcher_util import terrarun_path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROGRAMS_DIR = os.path.join(ROOT, "examples", "programs")
PROGRAMS = sorted(f[:-3] for f in os.listdir(PROGRAMS_DIR)
                  if f.endswith(".py") and f != "common.py" and not f.startswith("_"))
ITERS = 4
TIMEOUT = 300


def program_args(name, out_dir):
    return [os.path.join(PROGRAMS_DIR, name + ".py"), "--size", "tiny", "--iters", str(ITERS),
            "--warmup", "0", "--threads", "1", "--result-json", str(out_dir / f"{name}.json"),
            "--save-params", str(out_dir / f"{name}.pt")]


def finish(proc, what):
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, f"{what} failed:\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return stdout, stderr


def run_eager_and_traced(name, tmp_path, *terrarun_options):
    """Runs the program eagerly and under terrarun --mode trace, concurrently.

    Returns (eager output dir, traced output dir, the traced run's stderr).
    """
    eager_dir, traced_dir = tmp_path / "eager", tmp_path / "traced"
    eager_dir.mkdir()
    traced_dir.mkdir()
    popen = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    eager = subprocess.Popen([sys.executable, *program_args(name, eager_dir)], **popen)
    traced = subprocess.Popen([terrarun_path(), "--python", sys.executable, "--mode", "trace",
                               *terrarun_options, *program_args(name, traced_dir)], **popen)
    finish(eager, f"python3 {name}.py")
    _, stderr = finish(traced, f"terrarun --mode trace {name}.py")
    return eager_dir, traced_dir, stderr


def assert_same_results(name, eager_dir, traced_dir):
    with open(eager_dir / f"{name}.json") as fe, open(traced_dir / f"{name}.json") as ft:
        eager, traced = json.load(fe), json.load(ft)
    assert len(eager["losses"]) == ITERS
    assert traced["losses"] == eager["losses"]
    a = torch.load(eager_dir / f"{name}.pt")
    b = torch.load(traced_dir / f"{name}.pt")
    assert a.keys() == b.keys()
    for model in a:
        assert a[model].keys() == b[model].keys(), model
        for key in a[model]:
            x, y = a[model][key], b[model][key]
            assert x.dtype == y.dtype and x.shape == y.shape, f"{model}.{key}"
            assert torch.equal(x, y), f"{model}.{key} differs under tracing"


@pytest.mark.parametrize("name", PROGRAMS)
def test_traced_program_bit_identical_to_eager(name, tmp_path):
    eager_dir, traced_dir, stderr = run_eager_and_traced(name, tmp_path, "--report")
    assert_same_results(name, eager_dir, traced_dir)
    # Tracing really ran, and merged every iteration but the first (the prologue):
    # each program ends an iteration with one optimizer round.
    assert "Terra tracing report" in stderr, stderr[-3000:]
    traced = re.search(r"iterations traced: (\d+)", stderr)
    assert traced and int(traced.group(1)) == ITERS - 1, stderr[-3000:]


def test_report_and_dot_from_terrarun(tmp_path):
    dot = tmp_path / "out.dot"
    eager_dir, traced_dir, stderr = run_eager_and_traced("resnet", tmp_path, "--report", "--dot", str(dot))
    assert "Terra tracing report" in stderr and "TraceGraph:" in stderr, stderr[-3000:]
    assert dot.read_text().startswith("digraph")
    assert_same_results("resnet", eager_dir, traced_dir)
