"""examples/bench/run.py end to end on tiny programs, its JSON checked against a schema."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(ROOT, "examples", "bench", "run.py")

NUM = {"type": ["number", "null"]}
ROW = {
    "type": "object",
    "required": ["program", "mode", "status", "error", "iters_per_s", "iters_per_s_repeats", "ms_per_iter",
                 "speedup_vs_eager", "compile_s", "final_loss", "correctness", "coverage", "wall_s"],
    "properties": {
        "program": {"type": "string"},
        "mode": {"enum": ["eager", "terra", "compile", "jit"]},
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

# Stands in for terrarun: drops "-np 1", tags each output line with a rank, runs the program.
FAKE_TERRARUN = '''#!/bin/sh
shift 2
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
           "--modes", "eager,terra,jit", "--size", "tiny", "--iters", "2", "--warmup", "1", "--repeats", "2",
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
        for mode in ("eager", "terra", "jit"):
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
