"""terrarun end to end: launching, output, failures and bad input."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from launcher_util import run, terrarun_path, write_script

PRINT_RANK = """
    import os
    print(f"rank={os.environ['RANK']} world={os.environ['WORLD_SIZE']} "
          f"local={os.environ['LOCAL_RANK']} addr={os.environ['MASTER_ADDR']} "
          f"port={os.environ['MASTER_PORT']}")
"""


@pytest.mark.parametrize("n", [2, 4])
def test_runs_the_script_on_every_rank_with_torchrun_variables(tmp_path, n):
    # 4 ranks on this 2-core machine: oversubscribed on purpose.
    proc, _ = run(["-np", str(n), write_script(tmp_path, PRINT_RANK)])
    assert proc.returncode == 0, proc.stderr
    lines = sorted(proc.stdout.splitlines())
    assert len(lines) == n
    port = None
    for r, line in enumerate(lines):
        m = re.fullmatch(rf"\[{r}\] rank={r} world={n} local={r} addr=127.0.0.1 port=(\d+)", line)
        assert m, line
        port = port or m.group(1)
        assert m.group(1) == port


def test_runs_other_executables_directly():
    proc, _ = run(["-np", "2", "--no-prefix", "/bin/sh", "-c", 'echo "sh $RANK"'])
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split("\n")[:2]) == ["sh 0", "sh 1"]


def test_report_and_dot_are_exported_to_every_rank(tmp_path):
    show = ["/bin/sh", "-c", 'echo "$RANK report=$TERRA_REPORT dot=$TERRA_DOT"']
    # A relative --dot is resolved against terrarun's directory, not the rank's.
    proc, _ = run(["-np", "2", "--no-prefix", "--report", "--dot", "graph.dot", *show],
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    dot = os.path.join(os.path.realpath(tmp_path), "graph.dot")
    assert sorted(proc.stdout.splitlines()) == [f"0 report=1 dot={dot}", f"1 report=1 dot={dot}"]
    # Absent options override whatever the caller's environment says.
    proc, _ = run(["--no-prefix", *show], env={**os.environ, "TERRA_REPORT": "1", "TERRA_DOT": "x"})
    assert proc.stdout == "0 report=0 dot=\n", proc.stderr
    proc, _ = run(["--no-prefix", "--debug", *show])
    assert proc.stdout == "0 report=1 dot=\n", proc.stderr


def test_help_and_version():
    proc, _ = run(["--help"])
    assert proc.returncode == 0 and "-np" in proc.stdout
    proc, _ = run(["--version"])
    assert proc.returncode == 0 and re.match(r"terrarun \d+\.\d+", proc.stdout)


def test_stderr_stays_stderr_and_partial_lines_are_flushed(tmp_path):
    script = write_script(tmp_path, """
        import sys
        sys.stderr.write("to stderr\\n")
        sys.stdout.write("no newline")
    """)
    proc, _ = run(["-np", "1", script])
    assert proc.returncode == 0
    assert proc.stderr.strip() == "[0] to stderr"
    assert proc.stdout == "[0] no newline\n"


def test_failing_rank_exit_code_is_the_jobs(tmp_path):
    script = write_script(tmp_path, """
        import os, sys, time
        import terra
        if terra.distributed.rank() == 1:
            sys.exit(3)
        time.sleep(60)
    """)
    proc, seconds = run(["-np", "3", "--kill-grace", "2", script])
    assert proc.returncode == 3
    assert re.search(r"terrarun: rank 1 \(pid \d+\) exited with code 3; stopping the other 2 processes",
                     proc.stderr), proc.stderr
    assert seconds < 10


def test_rank_killed_by_sigkill_takes_the_job_down_within_5s(tmp_path):
    marker = tmp_path / "killed_at"
    script = write_script(tmp_path, f"""
        import os, signal, time
        import terra
        terra.distributed.barrier()
        if terra.distributed.rank() == 1:
            open({str(marker)!r}, "w").write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
    """)
    proc, _ = run(["-np", "2", script])
    ended = time.time()
    assert proc.returncode == 128 + signal.SIGKILL
    assert "rank 1" in proc.stderr and "SIGKILL" in proc.stderr, proc.stderr
    assert ended - float(marker.read_text()) < 5.0


def test_hung_rank_is_detected_within_30s(tmp_path):
    # SIGSTOP: the rank is alive but silent (no heartbeat). Default settings.
    script = write_script(tmp_path, """
        import os, signal, time
        import terra
        terra.distributed.barrier()
        if terra.distributed.rank() == 1:
            os.kill(os.getpid(), signal.SIGSTOP)
        time.sleep(120)
    """)
    proc, seconds = run(["-np", "2", script], timeout=60)
    assert proc.returncode == 124, proc.stderr
    assert re.search(r"rank 1 \(pid \d+\) sent no heartbeat for [\d.]+ s: it is hung or stopped",
                     proc.stderr), proc.stderr
    assert seconds < 30


def test_sigterm_is_forwarded_to_every_rank(tmp_path):
    script = write_script(tmp_path, """
        import signal, sys, time
        import terra
        def on_term(signo, frame):
            print(f"rank {terra.distributed.rank()} got SIGTERM", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        terra.distributed.barrier()
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([terrarun_path(), "-np", "2", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = 0
    while seen < 2:
        line = proc.stdout.readline()
        assert line, "terrarun ended before the ranks were ready"
        seen += "ready" in line
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "[0] rank 0 got SIGTERM" in out and "[1] rank 1 got SIGTERM" in out, out
    assert "received SIGTERM" in err


@pytest.mark.parametrize("args, message", [
    (["-np", "0", "x.py"], "invalid number of ranks '0'"),
    (["-np", "-1", "x.py"], "invalid number of ranks '-1'"),
    (["-np", "abc", "x.py"], "invalid number of ranks 'abc'"),
    (["--frobnicate", "x.py"], "unknown option '--frobnicate'"),
    (["-np", "2"], "no program given"),
    (["-np", "2", "does_not_exist.py"], "script 'does_not_exist.py' not found"),
    (["-np", "2", "no-such-program-anywhere"], "cannot run 'no-such-program-anywhere'"),
    (["-H", "nonexistent-host.invalid:1", "x.py"], "host 'nonexistent-host.invalid' cannot be resolved"),
    (["--hostfile", "/nonexistent/hostfile", "x.py"], "hostfile '/nonexistent/hostfile' cannot be read"),
    (["--mode", "eager", "--report", "x.py"], "--report needs tracing: use --mode trace or auto"),
    (["--dot", "/nonexistent/g.dot", "x.py"], "(/nonexistent) does not exist"),
])
def test_bad_input_gets_a_clear_error_and_exit_2(args, message):
    proc, seconds = run(args, timeout=30)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("terrarun: error: "), proc.stderr
    assert message in proc.stderr, proc.stderr
    assert seconds < 10


def test_python_syntax_error_fails_the_job_naming_the_rank(tmp_path):
    script = write_script(tmp_path, "def broken(:\n    pass\n")
    proc, seconds = run(["-np", "2", script], timeout=30)
    assert proc.returncode == 1
    assert "SyntaxError" in proc.stderr
    assert re.search(r"terrarun: rank [01] \(pid \d+\) exited with code 1", proc.stderr), proc.stderr
    assert seconds < 10


def test_mpirun_path_on_localhost(tmp_path):
    if subprocess.run(["which", "mpirun"], capture_output=True).returncode != 0:
        pytest.skip("Open MPI's mpirun is not installed")
    script = write_script(tmp_path, """
        import os
        import terra
        terra.distributed.barrier()
        print(f"rank={terra.distributed.rank()} world={terra.distributed.world_size()}")
    """)
    proc, _ = run(["-H", "localhost:2", "--master-addr", "127.0.0.1", script], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank=0 world=2" in proc.stdout and "rank=1 world=2" in proc.stdout, proc.stdout
