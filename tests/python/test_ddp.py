"""terra.distributed.DistributedDataParallel against the two references the
collectives issue names: single-process training on the concatenated batch
(within 1e-6 after 20 steps) and PyTorch's own DDP over gloo (bit for bit at
two ranks: both average with one exact division by 2 of a commutative sum)."""
import os
import subprocess
import sys

import pytest
import torch

from launcher_util import run, write_script

PROGRAM = os.path.join(os.path.dirname(__file__), "programs", "ddp_check.py")

CONFIGS = {
    "default": [],
    # Several buckets of different sizes, frozen and sometimes-unused
    # parameters, and gradient accumulation under no_sync.
    "uneven_unused_frozen_nosync": ["--bucket-cap-mb", "0.005", "--unused", "--frozen",
                                    "--micro", "3"],
}


def train(tmp_path, name, ddp, options):
    out = str(tmp_path / f"{name}_{ddp}.pt")
    args = [PROGRAM, "--ddp", ddp, "--out", out, "--steps", "20", *options]
    if ddp == "none":
        proc = subprocess.run([sys.executable, *args, "--world", "2"], capture_output=True,
                              text=True, timeout=300)
    else:
        proc, _ = run(["-np", "2", sys.executable, *args], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return torch.load(out)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_single_process_and_torch_ddp(tmp_path, name):
    options = CONFIGS[name]
    ours = train(tmp_path, name, "terra", options)
    single = train(tmp_path, name, "none", options)
    torch_ddp = train(tmp_path, name, "torch", options)
    assert ours["params"].keys() == single["params"].keys()
    for key, value in ours["params"].items():
        diff = (value - single["params"][key]).abs().max().item()
        assert diff <= 1e-6, f"{key}: {diff} from single-process training"
        assert torch.equal(value, torch_ddp["params"][key]), f"{key} differs from torch DDP"
    assert ours["losses"] == torch_ddp["losses"]
    if name != "default":
        sizes = [len(b) for b in ours["plan"]]
        assert len(sizes) >= 3 and len(set(sizes)) >= 2, ours["plan"]
        assert not any(n.startswith("frozen.") for b in ours["plan"] for n in b)


def test_unused_parameter_without_find_unused_is_an_error(tmp_path):
    script = write_script(tmp_path, """
        import torch, terra, terra.distributed as d
        m = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 4), "b": torch.nn.Linear(4, 4)})
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__(); self.m = m
            def forward(self, x):
                return self.m["a"](x)
        ddp = d.DistributedDataParallel(Net())
        ddp(torch.ones(2, 4)).sum().backward()
        try:
            ddp(torch.ones(2, 4))
        except terra.TerraError as e:
            print("error:", e)
        """)
    proc, _ = run(["-np", "2", sys.executable, script], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("m.b.weight, m.b.bias") == 2, proc.stdout
    assert "find_unused_parameters=True" in proc.stdout


def test_different_models_on_ranks_are_reported_not_hung(tmp_path):
    script = write_script(tmp_path, """
        import torch, terra, terra.distributed as d
        width = 8 if d.rank() == 0 else 9
        d.DistributedDataParallel(torch.nn.Linear(4, width))
        """)
    proc, seconds = run(["-np", "2", sys.executable, script], timeout=120)
    assert proc.returncode != 0
    assert "different gradient bucket plans" in proc.stderr, proc.stderr
    assert "[9, 4]" in proc.stderr and "[8, 4]" in proc.stderr
    assert seconds < 30


def test_overlap_launches_buckets_during_backward(tmp_path):
    script = write_script(tmp_path, """
        import torch, terra, terra.distributed as d
        net = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])
        ddp = d.DistributedDataParallel(net, bucket_cap_mb=0.25)
        for _ in range(3):
            ddp(torch.randn(16, 256)).sum().backward()
        n = len(ddp.bucket_plan)
        # Every bucket but those closed by the last gradients was launched
        # from a gradient hook, before the end of backward.
        print("buckets", n, "launched_in_backward", ddp.stats["buckets_launched_in_backward"])
        assert n >= 8 and ddp.stats["buckets_launched_in_backward"] == 3 * n, ddp.stats
        """)
    proc, _ = run(["-np", "2", sys.executable, script], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
