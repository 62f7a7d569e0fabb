"""examples/bench/run.py end to end on tiny programs, its JSON checked against a schema."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(ROOT, "examples", "bench", "run.py")

NUM = {"type": ["number", "null"]}
COEXEC = {"oneOf": [{"type": "null"}, {
    "type": "object",
    "required": ["iterations", "fallbacks", "submitted", "first_divergence", "python_s", "executor_busy_s",
                 "fetch_wait_s", "shares_pct"],
    "properties": {"python_s": NUM, "executor_busy_s": NUM, "fetch_wait_s": NUM,
                   "first_divergence": {"type": ["string", "null"]},
                   "shares_pct": {"oneOf": [{"type": "null"}, {
                       "type": "object", "required": ["python", "executor_busy", "fetch_wait"]}]}}}]}
ROW = {
    "type": "object",
    "required": ["program", "mode", "status", "error", "iters_per_s", "iters_per_s_repeats", "ms_per_iter",
                 "speedup_vs_eager", "compile_s", "final_loss", "correctness", "coverage", "coexec", "wall_s"],
    "properties": {
        "program": {"type": "string"},
        "mode": {"enum": ["eager", "terra", "coexec", "compile", "jit"]},
        "status": {"enum": ["ok", "failed", "unavailable"]},
        "error": {"type": ["string", "null"]},
        "iters_per_s": NUM, "ms_per_iter": NUM, "speedup_vs_eager": NUM, "compile_s": NUM, "final_loss": NUM,
        "iters_per_s_repeats": {"type": "array", "items": {"type": "number"}},
        "correctness": {"oneOf": [{"type": "null"}, {
            "type": "object",
            "required": ["loss_abs_diff", "param_max_abs_diff", "bit_identical"],
            "properties": {"loss_abs_diff": NUM, "param_max_abs_diff": NUM,
                           "bit_identical": {"type": "boolean"}}}]},
        "coverage": {"type": "object"},
        "coexec": COEXEC,
        "wall_s": {"type": "number"},
    },
}
SCHEMA = {
    "type": "object",
    "required": ["schema_version", "config", "environment", "results"],
    "properties": {
        "schema_version": {"const": 1},
        "config": {"type": "object", "required": ["programs", "modes", "iters", "warmup", "repeats", "size", "device"]},
        "environment": {"type": "object", "required": ["torch", "python", "threads", "terrarun"]},
        "results": {"type": "array", "items": ROW},
    },
}

FAILING_PROGRAM = '''#!/usr/bin/env python3
"""Fails at once, the way a program a mode cannot handle fails."""
raise RuntimeError("deliberate failure\\nsecond line of the message")
'''

# Stands in for terrarun: drops "-np 1" and "--mode M", tags each output line with a rank,
# runs the program. It writes no Terra stats, so mode coexec's columns read "n/a".
FAKE_TERRARUN = '''#!/bin/sh
shift 2
if [ "$1" = "--mode" ]; then shift 2; fi
"$@" 2>&1 | sed 's/^/[0] /'
'''


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    failing = tmp / "always_fails.py"
    failing.write_text(FAILING_PROGRAM)
    fake = tmp / "terrarun"
    fake.write_text(FAKE_TERRARUN)
    fake.chmod(0o755)
    out_json, out_png = tmp / "out.json", tmp / "out.png"
    cmd = [sys.executable, RUN, "--programs", f"resnet,policy_gradient,{failing}",
           "--modes", "eager,terra,coexec,jit", "--size", "tiny", "--iters", "2", "--warmup", "1", "--repeats", "2",
           "--terrarun", f"{fake} -np 1", "--json", str(out_json), "--plot", str(out_png)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out_json) as f:
        data = json.load(f)
    return data, proc.stdout, out_png


def rows(data):
    return {(r["program"], r["mode"]): r for r in data["results"]}


def test_json_matches_schema(report):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report[0], SCHEMA)


def test_every_program_and_mode_is_reported(report):
    data, stdout, png = report
    got = rows(data)
    for program in ("resnet", "policy_gradient", "always_fails"):
        for mode in ("eager", "terra", "coexec", "jit"):
            assert (program, mode) in got
            assert f"{program}" in stdout
    assert png.exists() and png.stat().st_size > 10_000


def test_eager_is_the_reference(report):
    got = rows(report[0])
    for program in ("resnet", "policy_gradient"):
        eager = got[(program, "eager")]
        assert eager["status"] == "ok" and eager["iters_per_s"] > 0 and eager["speedup_vs_eager"] == 1.0
        assert len(eager["iters_per_s_repeats"]) == 2
        assert eager["correctness"]["bit_identical"], "eager differs from eager in another process"


def test_terra_mode_runs_through_the_launcher(report):
    got = rows(report[0])
    terra = got[("resnet", "terra")]
    assert terra["status"] == "ok", terra["error"]
    assert terra["correctness"]["bit_identical"]


def test_jit_mode_reports_coverage(report):
    got = rows(report[0])
    jit = got[("resnet", "jit")]
    assert jit["status"] == "ok", jit["error"]
    assert jit["coverage"]["jit"][0]["method"] in ("script", "trace")
    assert jit["correctness"]["param_max_abs_diff"] is not None


def test_a_failing_program_is_reported_not_fatal(report):
    got = rows(report[0])
    for mode in ("eager", "jit"):
        row = got[("always_fails", mode)]
        assert row["status"] == "failed"
        assert "RuntimeError: deliberate failure" in row["error"]
        assert "second line" not in row["error"]


def test_terra_is_unavailable_without_terrarun(tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin")  # the harness runs programs with sys.executable
    out_json = tmp_path / "out.json"
    cmd = [sys.executable, RUN, "--programs", "policy_gradient", "--modes", "terra", "--size", "tiny",
           "--iters", "1", "--warmup", "0", "--repeats", "1", "--json", str(out_json)]
    if any(os.access(os.path.join(d, "terrarun"), os.X_OK) for d in env["PATH"].split(os.pathsep)):
        pytest.skip("a terrarun is installed in a system folder")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(out_json.read_text())["results"][0]
    assert row["status"] == "unavailable" and "terrarun not on PATH" in row["error"]


def test_coexec_without_terra_stats_reads_n_a(report):
    data, stdout, _ = report
    row = rows(data)[("resnet", "coexec")]
    assert row["status"] == "ok", row["error"]
    assert row["coexec"] is None
    assert row["correctness"]["bit_identical"]
    line = next(ln for ln in stdout.splitlines() if ln.split()[:2] == ["resnet", "coexec"])
    assert line.split()[5:8] == ["n/a", "n/a", "n/a"] and "no Terra stats" in line
    for mode in ("eager", "terra", "jit"):  # the split is coexec's alone
        assert rows(data)[("resnet", mode)]["coexec"] is None


@pytest.fixture(scope="module")
def coexec_report(tmp_path_factory):
    """The real terrarun in mode coexec, on one tiny program."""
    if not shutil.which("terrarun") or importlib.util.find_spec("terra") is None:
        pytest.skip("needs terrarun on PATH and terra importable")
    tmp = tmp_path_factory.mktemp("bench_coexec")
    out_json, out_md = tmp / "out.json", tmp / "out.md"
    cmd = [sys.executable, RUN, "--programs", "lstm_lm", "--modes", "eager,coexec", "--size", "tiny",
           "--iters", "8", "--warmup", "1", "--repeats", "1", "--json", str(out_json), "--markdown", str(out_md)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out_json.read_text()), proc.stdout, out_md.read_text()


def test_coexec_json_matches_schema(coexec_report):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(coexec_report[0], SCHEMA)


def test_coexec_mode_reports_the_time_split(coexec_report):
    data, stdout, markdown = coexec_report
    row = rows(data)[("lstm_lm", "coexec")]
    assert row["status"] == "ok", row["error"]
    assert row["correctness"]["bit_identical"], row["correctness"]
    assert row["speedup_vs_eager"] > 0
    c = row["coexec"]
    assert c is not None, "no Terra stats read back"
    assert c["iterations"] >= 1 and c["submitted"] > 0 and 0 <= c["fallbacks"] <= c["iterations"]
    for key in ("python_s", "executor_busy_s", "fetch_wait_s"):
        assert c[key] >= 0, (key, c)
    assert abs(c["python_s"] - max(0.0, c["iter_s"] - c["fetch_wait_s"])) < 1e-9  # program thread, not waiting
    shares = c["shares_pct"]
    assert all(v >= 0 for v in shares.values())
    assert abs(sum(shares.values()) - 100.0) < 1e-6
    # The text table and the Markdown show the shares, rounded, next to the speedup.
    header = stdout.splitlines()[0]
    assert "py %" in header and "exec %" in header and "wait %" in header
    line = next(ln for ln in stdout.splitlines() if ln.split()[:2] == ["lstm_lm", "coexec"])
    cells = [int(v) for v in line.split()[5:8]]
    assert abs(sum(cells) - 100) <= 2, line
    assert "| Python % | executor busy % | fetch wait % |" in markdown
    md = next(ln for ln in markdown.splitlines() if ln.startswith("| lstm_lm | coexec |"))
    assert [int(v) for v in md.split("|")[6:9]] == cells
