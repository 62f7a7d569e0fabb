"""The README's main job: the default example trains data-parallel on 2 ranks."""
import pathlib
import re

from launcher_util import run, write_script

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_default_example_trains_on_two_ranks_with_identical_parameters():
    proc, _ = run(["-np", "2", str(ROOT / "examples" / "ddp_train.py"), "--steps", "60"],
                  timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "[0]   parameters      identical on every rank" in out, out
    m = re.search(r"loss\s+([\d.]+) -> ([\d.]+)", out)
    assert m and float(m.group(2)) < float(m.group(1)), out
    assert "[1] " not in out  # only rank 0 reports


def test_torch_process_group_rendezvous_through_the_control_plane(tmp_path):
    script = write_script(tmp_path, """
        import torch, torch.distributed as dist
        import terra.distributed as tdist
        tdist.init_torch_process_group("gloo")
        t = torch.full((3,), float(tdist.rank() + 1))
        dist.all_reduce(t)
        print("sum", t.tolist())
        dist.destroy_process_group()
    """)
    proc, _ = run(["-np", "3", script], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("sum [6.0, 6.0, 6.0]") == 3, proc.stdout


def test_shard_indices_cover_the_data_once():
    import terra.distributed as tdist
    n, world = 10, 3
    shards = [list(tdist.shard_indices(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(s) for s in shards] == [4, 3, 3]
    dropped = [list(tdist.shard_indices(n, r, world, drop_last=True)) for r in range(world)]
    assert [len(s) for s in dropped] == [3, 3, 3]
    assert tdist.shard(list("abcdefg"), 1, 2) == ["b", "d", "f"]
