"""terra.distributed's tensor collectives, end to end under terrarun."""
import sys

from launcher_util import run, write_script

PROGRAM = """
import torch, terra, terra.distributed as d
r, w = d.rank(), d.world_size()
def expect(got, want, what):
    assert torch.equal(got, want), f"{what}: rank {r} got {got.tolist()}, want {want.tolist()}"

for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32,
              torch.int64, torch.uint8, torch.int8):
    t = torch.full((7,), r + 1, dtype=dtype); d.all_reduce(t)
    expect(t, torch.full((7,), w * (w + 1) // 2, dtype=dtype), f"sum {dtype}")
    t = torch.full((7,), r + 1, dtype=dtype); d.all_reduce(t, d.ReduceOp.MAX)
    expect(t, torch.full((7,), w, dtype=dtype), f"max {dtype}")
    t = torch.full((7,), r + 1, dtype=dtype); d.all_reduce(t, "min")
    expect(t, torch.full((7,), 1, dtype=dtype), f"min {dtype}")
t = torch.arange(6, dtype=torch.float32) + r; d.all_reduce(t, d.ReduceOp.AVG)
expect(t, torch.arange(6, dtype=torch.float32) + (w - 1) / 2, "avg float")
t = torch.tensor([r - 2], dtype=torch.int64); d.all_reduce(t, d.ReduceOp.AVG)
expect(t, torch.tensor([sum(k - 2 for k in range(w)) // w]), "avg int floors")
import torch.distributed as td
t = torch.ones(3) * r; d.all_reduce(t, op=td.ReduceOp.SUM)
expect(t, torch.ones(3) * sum(range(w)), "torch.distributed.ReduceOp accepted")
t = torch.tensor([r == 1]); d.all_reduce(t, d.ReduceOp.MAX)
expect(t, torch.tensor([w > 1]), "bool any")

t = torch.full((2, 3), float(r)); d.broadcast(t, src=w - 1)
expect(t, torch.full((2, 3), float(w - 1)), "broadcast")
out = [torch.empty(2, dtype=torch.int64) for _ in range(w)]
d.all_gather(out, torch.tensor([r, 10 * r]))
for k in range(w): expect(out[k], torch.tensor([k, 10 * k]), "all_gather")
flat = torch.empty(w * 3); d.all_gather_into_tensor(flat, torch.full((3,), float(r)))
expect(flat, torch.arange(w).repeat_interleave(3).float(), "all_gather_into_tensor")
o = torch.empty(2)
d.reduce_scatter(o, [torch.full((2,), float(r * 100 + k)) for k in range(w)])
expect(o, torch.full((2,), float(sum(q * 100 + r for q in range(w)))), "reduce_scatter")
o = torch.empty(4)
d.reduce_scatter_tensor(o, torch.arange(4 * w, dtype=torch.float32), op="max")
expect(o, torch.arange(4 * r, 4 * r + 4, dtype=torch.float32), "reduce_scatter_tensor")

# Asynchronous: several in flight, completed in order.
big = [torch.full((1 << 18,), float(r + k)) for k in range(4)]
works = [d.all_reduce(b, async_op=True) for b in big]
for k, (wk, b) in enumerate(zip(works, big)):
    wk.wait()
    assert wk.is_completed()
    expect(b[:3], torch.full((3,), float(sum(q + k for q in range(w)))), f"async {k}")
print(f"rank {r}: collectives ok over {d.get_backend(t)}")
"""


def test_collectives_np2_and_np3(tmp_path):
    script = write_script(tmp_path, PROGRAM)
    for np_ in ("2", "3"):
        proc, _ = run(["-np", np_, sys.executable, script], timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count("collectives ok over mpi") == int(np_), proc.stdout


def test_collectives_single_process_without_terrarun(tmp_path):
    import subprocess
    script = write_script(tmp_path, PROGRAM)
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "collectives ok over local" in proc.stdout


def test_bad_arguments_name_the_problem(tmp_path):
    script = write_script(tmp_path, """
        import torch, terra, terra.distributed as d
        def fails(fn, words):
            try:
                fn()
            except (terra.TerraError, ValueError) as e:
                assert all(w in str(e) for w in words), str(e)
                return
            raise AssertionError(f"no error for {words}")
        fails(lambda: d.all_reduce(torch.ones(4, 4).t()), ["not contiguous", "contiguous()"])
        fails(lambda: d.all_reduce(torch.ones(2, dtype=torch.complex64), op="max"),
              ["ComplexFloat", "dtype"])
        c = torch.ones(2, dtype=torch.complex64) * (1 + 2j); d.all_reduce(c)
        assert c.tolist() == [2 + 4j, 2 + 4j], c
        fails(lambda: d.all_reduce(torch.ones(2, dtype=torch.bool)), ["bool", "max"])
        fails(lambda: d.broadcast(torch.ones(2), src=5), ["src=5", "world size 2"])
        fails(lambda: d.all_gather_into_tensor(torch.empty(3), torch.ones(2)),
              ["all_gather", "3 elements"])
        fails(lambda: d.all_gather([torch.empty(2)], torch.ones(2)), ["one per rank"])
        fails(lambda: d.all_reduce(torch.ones(2), op="xor"), ["unsupported reduce op"])
        fails(lambda: d.all_reduce(torch.ones(2), timeout=-1), ["timeout must be positive"])
        # The job is still usable after rejected calls: nothing was submitted.
        t = torch.ones(2); d.all_reduce(t); assert t.tolist() == [2.0, 2.0]
        print("errors ok")
        """)
    proc, _ = run(["-np", "2", sys.executable, script], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("errors ok") == 2


def test_rank_killed_mid_allreduce_takes_job_down_fast(tmp_path):
    script = write_script(tmp_path, """
        import os, signal, time, torch, terra, terra.distributed as d
        t = torch.ones(1 << 22)
        d.all_reduce(t)  # the world is formed
        print("formed", flush=True)
        if d.rank() == 1:
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
        # Rank 0 is inside an all-reduce that rank 1 never joins.
        d.all_reduce(t)
        print("not reached")
        """)
    proc, seconds = run(["-np", "2", sys.executable, script], timeout=60)
    assert proc.returncode == 128 + 9, proc.stdout + proc.stderr
    assert "not reached" not in proc.stdout
    assert "rank 1" in proc.stderr and "SIGKILL" in proc.stderr, proc.stderr
    assert seconds < 5 + 3, seconds  # startup + formation, then < 5 s to take it down


def test_collective_timeout_raises_and_fails_the_job(tmp_path):
    script = write_script(tmp_path, """
        import sys, time, torch, terra, terra.distributed as d
        t = torch.ones(4)
        d.all_reduce(t)
        if d.rank() == 1:
            time.sleep(30)  # never joins the next all-reduce
        try:
            d.all_reduce(t, timeout=1.0)
        except terra.TerraTimeoutError as e:
            print("timed out:", e, flush=True)
            sys.exit(3)
        """)
    proc, seconds = run(["-np", "2", sys.executable, script], timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "timed out:" in proc.stdout and "allreduce" in proc.stdout
    assert seconds < 25, seconds


def test_exception_on_one_rank_ends_the_job_without_waiting_in_mpi(tmp_path):
    script = write_script(tmp_path, """
        import time, torch, terra, terra.distributed as d
        t = torch.ones(8)
        d.all_reduce(t)  # MPI is up on every rank
        if d.rank() == 1:
            raise ValueError("bad batch on rank 1")
        d.all_reduce(t)  # rank 0 waits here; terrarun must stop it
        """)
    proc, seconds = run(["-np", "2", sys.executable, script], timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ValueError: bad batch on rank 1" in proc.stderr
    assert "rank 1" in proc.stderr and "exited with code 1" in proc.stderr, proc.stderr
    assert seconds < 10, seconds  # no MPI_Finalize wait, no exit-barrier wait


def test_ranks_leave_together_after_collectives(tmp_path):
    # Rank 0 finishes 2 s later than rank 1: both still leave cleanly (the exit
    # barrier waits up to 10 s, then MPI is finalized together).
    script = write_script(tmp_path, """
        import time, torch, terra, terra.distributed as d
        t = torch.ones(8)
        d.all_reduce(t)
        if d.rank() == 0:
            time.sleep(2)
        print("done", d.rank())
        """)
    proc, seconds = run(["-np", "2", sys.executable, script], timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "done 0" in proc.stdout and "done 1" in proc.stdout
