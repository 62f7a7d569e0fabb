"""Every program in examples/programs runs a few iterations under eager PyTorch."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROGRAMS_DIR = os.path.join(ROOT, "examples", "programs")
PROGRAMS = sorted(f[:-3] for f in os.listdir(PROGRAMS_DIR)
                  if f.endswith(".py") and f != "common.py" and not f.startswith("_"))
LOSS = re.compile(r"\bloss (\S+)")


def run_program(name, tmp_path, *extra):
    result = tmp_path / f"{name}.json"
    params = tmp_path / f"{name}.pt"
    cmd = [sys.executable, os.path.join(PROGRAMS_DIR, name + ".py"), "--size", "tiny", "--iters", "3",
           "--warmup", "0", "--threads", "1", "--result-json", str(result), "--save-params", str(params), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, result, params


def test_suite_has_ten_programs_listed_in_readme():
    assert len(PROGRAMS) >= 10
    with open(os.path.join(PROGRAMS_DIR, "README.md")) as f:
        readme = f.read()
    for name in PROGRAMS:
        assert f"{name}.py" in readme, f"{name}.py is missing from examples/programs/README.md"


@pytest.mark.parametrize("name", PROGRAMS)
def test_program_runs_three_iterations(name, tmp_path):
    stdout, result, params = run_program(name, tmp_path)
    losses = [float(m.group(1)) for m in LOSS.finditer(stdout)]
    assert len(losses) == 3, stdout
    assert all(math.isfinite(v) for v in losses), stdout
    with open(result) as f:
        data = json.load(f)
    assert data["program"] == name and data["mode"] == "eager"
    assert len(data["iter_times_s"]) == 3 and data["iters_per_s"] > 0
    assert math.isfinite(data["final_loss"]) and data["final_loss"] == pytest.approx(losses[-1], abs=1e-5)
    assert params.exists()


@pytest.mark.parametrize("name", ["dcgan", "sdpoint"])
def test_eager_is_bit_identical_across_processes(name, tmp_path):
    import torch

    first = tmp_path / "a"
    second = tmp_path / "b"
    first.mkdir()
    second.mkdir()
    run_program(name, first)
    run_program(name, second)
    a = torch.load(first / f"{name}.pt")
    b = torch.load(second / f"{name}.pt")
    assert a.keys() == b.keys()
    for model in a:
        assert a[model].keys() == b[model].keys()
        for key in a[model]:
            assert torch.equal(a[model][key], b[model][key]), f"{model}.{key} differs"
    with open(first / f"{name}.json") as fa, open(second / f"{name}.json") as fb:
        assert json.load(fa)["losses"] == json.load(fb)["losses"]
