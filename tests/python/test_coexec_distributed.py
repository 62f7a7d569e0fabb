"""Co-execution at two ranks with terra.distributed.DistributedDataParallel
(docs/coexecution.md, "Several ranks"): parameters, buffers and losses
bit-identical to the same program under --mode eager; a rank that falls back
while the other co-executes issues the same collectives (no hang, same
results); the ranks agree on the iteration at which co-execution starts.
Each test also checks, per rank, that co-execution really happened."""
import json
import os
import re

import pytest
import torch

from launcher_util import run, write_script

PROGRAM = os.path.join(os.path.dirname(__file__), "programs", "ddp_coexec.py")
STATS_LINE = re.compile(r"^\[(\d+)\] STATS (.*)$", re.M)


def train(tmp_path, mode, *options, env=None):
    """Runs the program at 2 ranks; returns ({rank: saved state}, {rank: coexec stats})."""
    out = str(tmp_path / mode)
    proc, _ = run(["-np", "2", "--mode", mode, PROGRAM, "--out", out, *options], timeout=300,
                  cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stats = {int(r): json.loads(s) for r, s in STATS_LINE.findall(proc.stdout)}
    assert sorted(stats) == [0, 1], proc.stdout[-3000:]
    return {r: torch.load(f"{out}.rank{r}.pt") for r in (0, 1)}, stats


def assert_bit_identical(eager, coexec):
    for r in (0, 1):
        for kind in ("params", "buffers"):
            for name, value in eager[r][kind].items():
                assert torch.equal(value, coexec[r][kind][name]), f"rank {r}: {kind} {name} differs"
        assert torch.equal(eager[r]["losses"], coexec[r]["losses"]), f"rank {r}: losses differ"


def assert_coexecuted(stats):
    for r, s in stats.items():
        assert s["iterations"] > 0 and s["submitted"] > 0, (r, s)
    assert stats[0]["started_at_iteration"] == stats[1]["started_at_iteration"], stats


@pytest.mark.parametrize("options", [[], ["--unused"], ["--accumulate", "2"]],
                         ids=["all_used", "find_unused", "no_sync"])
def test_ddp_bit_identical_to_eager_at_two_ranks(tmp_path, options):
    # Several buckets (--bucket-cap-mb 0.01), BatchNorm buffers broadcast
    # before each forward; with --unused, a branch used every third step;
    # with --accumulate 2, a backward under no_sync() before each reducing one.
    eager, _ = train(tmp_path, "eager", *options)
    coexec, stats = train(tmp_path, "coexec", *options)
    assert_bit_identical(eager, coexec)
    assert_coexecuted(stats)
    # The backward replays as learned segments, DDP's gradient hooks run
    # between its pieces (docs/coexecution.md, "Data-parallel training").
    for r, s in stats.items():
        assert s["backward_replayed"] >= 5, (r, s)
    # The buckets' all-reduces and their waits are queued on the executor in
    # program order, not drained for: what still drains is the buffers'
    # broadcasts before each forward (BatchNorm's, two dtypes), with --unused
    # the used-map's all-reduce, and the final all-gather. (Draining for the
    # two buckets too made it 4 a step.)
    for r, s in stats.items():
        assert s["tasks_queued"] >= 2 * 5, (r, s)
        drained = sum(w["count"] for w in s["fetch_points"] if w["what"] == "collective")
        assert drained <= s["iterations"] * (3 if "--unused" in options else 2) + 2, (r, s)


def test_rank_falling_back_while_the_other_coexecutes(tmp_path):
    # Rank 1 alone runs one more op at step 12, long after co-execution
    # started: it falls back there while rank 0 goes on co-executing, and both
    # still issue the same all-reduces.
    options = ["--diverge-rank", "1", "--diverge-at", "12"]
    eager, _ = train(tmp_path, "eager", *options)
    coexec, stats = train(tmp_path, "coexec", *options)
    assert_bit_identical(eager, coexec)
    assert_coexecuted(stats)
    started = stats[0]["started_at_iteration"]
    assert started < 12, stats
    assert stats[1]["fallbacks"] >= 1, stats  # step 12's path was new
    assert stats[0]["iterations"] == stats[1]["iterations"] == 20 - started, stats


def test_ranks_start_coexecution_at_the_same_iteration(tmp_path):
    # Rank 1 takes a new path at step 3, while tracing: its TraceGraph
    # becomes stable later than rank 0's, and both start when both are.
    _, stats = train(tmp_path, "coexec", "--diverge-rank", "1", "--diverge-at", "3")
    assert_coexecuted(stats)
    started = stats[0]["started_at_iteration"]
    assert stats[0]["locally_stable_at_iteration"] < started, stats
    assert started == max(s["locally_stable_at_iteration"] for s in stats.values()), stats


def test_give_up_is_agreed(tmp_path):
    # Rank 1's graph never settles (a new batch size every step): both ranks
    # give up at the same iteration, rank 0 although its own graph is stable.
    script = write_script(tmp_path, """
        import torch, terra, terra.distributed as d
        torch.manual_seed(0)
        ddp = d.DistributedDataParallel(torch.nn.Linear(4, 2))
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for step in range(12):
            n = 8 if d.rank() == 0 else 2 + step
            loss = ddp(torch.randn(n, 4)).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
        s = terra._tracing._last_session()
        print("RESULT", s.stopped_reason, s.boundaries, s.locally_stable_at is not None)
        """)
    proc, _ = run(["-np", "2", "--mode", "coexec", script], timeout=120, cwd=tmp_path,
                  env=dict(os.environ, TERRA_GIVE_UP_AFTER="6"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[0] RESULT unstable_elsewhere 7 True" in proc.stdout, proc.stdout
    assert "[1] RESULT unstable 7 False" in proc.stdout, proc.stdout


def test_rank_that_stops_tracing_early_does_not_block_the_others(tmp_path):
    # Rank 0 stops after 3 iterations (its program ends or disables Terra)
    # while rank 1 still traces: rank 1 counts it out and starts alone.
    for how in ("exit", "disable"):
        script = write_script(tmp_path, f"""
            import time, torch, terra, terra.distributed as d
            model = torch.nn.Linear(4, 2)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for step in range(3 if d.rank() == 0 else 12):
                loss = model(torch.randn(8, 4)).pow(2).mean()
                opt.zero_grad(); loss.backward(); opt.step()
            if d.rank() == 0 and {how!r} == "disable":
                terra.disable()
                time.sleep(2)
            print("RESULT", terra.stats()["coexec"]["iterations"])
            """)
        proc, seconds = run(["-np", "2", "--mode", "coexec", script], timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "[0] RESULT 0" in proc.stdout, proc.stdout
        found = re.search(r"\[1\] RESULT (\d+)", proc.stdout)
        assert found and int(found.group(1)) > 0, proc.stdout
        assert seconds < 60, seconds


def test_a_rank_that_stops_reducing_fails_the_job_instead_of_hanging(tmp_path):
    # Rank 0 co-executes, so its executor launches and waits for the bucket's
    # all-reduce (queued). Rank 1 stalls before its backward at step 12: the
    # all-reduce times out on rank 0 (DDP's timeout, 3 s), the error surfaces
    # at rank 0's next fetch, and the job ends with a non-zero exit.
    script = write_script(tmp_path, """
        import time, torch, terra, terra.distributed as d
        torch.manual_seed(0)
        ddp = d.DistributedDataParallel(torch.nn.Linear(4, 2), timeout=3)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for step in range(30):
            loss = ddp(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            if d.rank() == 1 and step == 12:
                time.sleep(120)
            loss.backward()
            opt.step()
            print("step", step, loss.item(), terra.stats().get("coexec", {}).get("tasks_queued"), flush=True)
        """)
    proc, seconds = run(["-np", "2", "--mode", "coexec", script], timeout=120, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert seconds < 60, (seconds, out)
    queued = [int(n) for n in re.findall(r"\[0\] step \d+ \S+ (\d+)", proc.stdout)]
    assert queued and max(queued) > 0, out  # rank 0's all-reduces were queued on its executor
    assert "timed out" in out or "timeout" in out.lower(), out


@pytest.mark.parametrize("slow_eager_ms, slow_coexec_ms, chosen", [(40, 80, "eager"), (80, 40, "coexec")])
def test_auto_choice_is_agreed(tmp_path, slow_eager_ms, slow_coexec_ms, chosen):
    # Default mode (auto) at two ranks with no collectives between them. Rank 0
    # is slowed in its eager iterations and rank 1 in its co-executed ones, so
    # each alone would choose differently; the ranks compare the slowest
    # rank's time per mode and take the same choice, by the numbers.
    script = write_script(tmp_path, f"""
        import json, time, torch, terra, terra.distributed as d
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(30):
            phase = terra._tracing._last_session().phase
            if d.rank() == 0 and phase == "eager":
                time.sleep({slow_eager_ms} / 1e3)
            if d.rank() == 1 and phase == "coexec":
                time.sleep({slow_coexec_ms} / 1e3)
            loss = model(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
        print("RESULT", json.dumps(terra.stats()["auto"]))
        print("REPORT", terra.report().replace("\\n", " | "))
        """)
    proc, seconds = run(["-np", "2", script], timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    auto = {int(r): json.loads(s) for r, s in re.findall(r"^\[(\d+)\] RESULT (.*)$", proc.stdout, re.M)}
    assert sorted(auto) == [0, 1], proc.stdout
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    own = {r: "coexec" if mean(a["coexec_iteration_s"]) < mean(a["eager_iteration_s"]) else "eager"
           for r, a in auto.items()}
    assert own == {0: "coexec", 1: "eager"}, auto  # alone, they would differ
    for r, a in auto.items():
        assert a["chosen"] == chosen and a["ranks_timed"] == 2, (r, a)
        assert a["decided_at_iteration"] == auto[0]["decided_at_iteration"], auto
        job = a["job_iteration_s"]
        for mode in ("coexec", "eager"):
            slowest = max(mean(b[f"{mode}_iteration_s"]) for b in auto.values())
            assert job[mode] == pytest.approx(slowest, rel=1e-9), auto
    assert proc.stdout.count("the slowest of the 2 ranks timed") == 2, proc.stdout
    assert seconds < 60, seconds
