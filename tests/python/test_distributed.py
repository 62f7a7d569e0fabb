"""terra.distributed basics over the control plane."""
import os
import re
import subprocess
import sys

import pytest

import terra
from launcher_util import run, write_script


def test_outside_terrarun_the_world_is_one_process():
    code = ("import terra, terra.distributed as d; d.init(); d.barrier(); "
            "print(d.rank(), d.world_size(), d.local_rank())")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRA_")}
    env.pop("WORLD_SIZE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "1", "0"]


def test_world_size_without_terrarun_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRA_")}
    env["WORLD_SIZE"] = "2"
    out = subprocess.run([sys.executable, "-c", "import terra; terra.distributed.init()"],
                         capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "not started by terrarun" in out.stderr


def test_four_ranks_rendezvous_and_barrier_repeatedly(tmp_path):
    script = write_script(tmp_path, """
        import time
        import terra
        import terra.distributed as dist
        for i in range(5):
            dist.barrier()
            # Ranks arrive late on purpose: nobody may leave a barrier early.
            time.sleep(0.01 * dist.rank())
        print(f"rank={dist.rank()} world={dist.world_size()} local={dist.local_rank()} done")
    """)
    proc, _ = run(["-np", "4", script])
    assert proc.returncode == 0, proc.stderr
    for r in range(4):
        assert f"[{r}] rank={r} world=4 local={r} done" in proc.stdout


def test_barrier_times_out_when_a_rank_never_arrives(tmp_path):
    script = write_script(tmp_path, """
        import time
        import terra
        import terra.distributed as dist
        if dist.rank() == 0:
            try:
                dist.barrier("lonely", timeout=0.5)
            except terra.TerraTimeoutError as e:
                print("timeout:", e)
        else:
            time.sleep(1.5)
    """)
    proc, _ = run(["-np", "2", script])
    assert proc.returncode == 0, proc.stderr
    assert "[0] timeout:" in proc.stdout
    assert "1 of 2" in proc.stdout, proc.stdout


def test_wrong_secret_is_refused(tmp_path):
    script = write_script(tmp_path, """
        import os
        import terra
        from terra import _C
        try:
            _C.ControlClient(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                             "not-the-secret", 0, 5.0)
            print("accepted")
        except terra.TerraError as e:
            print("refused:", e)
    """)
    proc, _ = run(["-np", "1", script])
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout and "secret" in proc.stdout, proc.stdout
