"""Helpers for tests that run terrarun as a user would."""
import os
import shutil
import subprocess
import sys
import textwrap
import time


def terrarun_path():
    path = shutil.which("terrarun")
    if path is None:
        raise RuntimeError("terrarun is not on PATH: build with scripts/build.sh first")
    return path


def write_script(tmp_path, body, name="prog.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def run(args, timeout=60, **kwargs):
    """Runs terrarun with args; returns (CompletedProcess, seconds)."""
    start = time.monotonic()
    proc = subprocess.run([terrarun_path(), *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    return proc, time.monotonic() - start
