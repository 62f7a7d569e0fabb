"""Tracing (issue #3): what terra.enable() records, and that it never changes results.

Tracing state is per process (one enable per process, a global optimizer hook, patched
sync entry points), so every test writes a small program to prog.py in its own tmp_path
and runs it in a fresh interpreter with that directory as the working directory; the
program prints one ``RESULT {json}`` line with what the test asserts. Locations in
stats() then read "prog.py:LINE in FUNCTION"; ``Program.line`` finds a line by the
``# <marker>`` comment on it.

Programs that check results run the same function twice in one process, first eagerly
(before terra.enable) and then traced, with the same seeds, and compare the two bit for
bit after terra.disable() (so the comparison's own ops are not traced).

Exact counts are asserted where the program fixes them (a program of plain ATen calls
with explicit terra.iteration() marks); where a count depends on how torch decomposes
an op (optimizers, backward), the tests assert relations instead: equal op counts
between iterations, nodes equal to ops per iteration, equal graphs for two trip counts.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

PRELUDE = '''\
import json
import sys

import torch
from torch import nn

import terra

torch.set_num_threads(1)


def emit(**fields):
    print("RESULT " + json.dumps(fields), flush=True)


def same(a, b):
    """Bit for bit: tensors by dtype, shape and torch.equal; floats by their bits."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a, b))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return isinstance(b, float) and a.hex() == b.hex()
    return a == b


def differences(eager, traced):
    """Names (keys of two dicts of results) whose values are not bit-identical."""
    assert eager.keys() == traced.keys()
    return sorted(k for k in eager if not same(eager[k], traced[k]))


def params(*modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


'''


class Program:
    """A program (PRELUDE + body) written to tmp_path/prog.py."""

    def __init__(self, tmp_path, body):
        self.dir = tmp_path
        self.text = PRELUDE + textwrap.dedent(body)
        self.path = tmp_path / "prog.py"
        self.path.write_text(self.text)

    def line(self, marker):
        """The 1-based line number of the one line that carries `# <marker>`."""
        tag = f"# <{marker}>"
        found = [i + 1 for i, text in enumerate(self.text.splitlines()) if text.rstrip().endswith(tag)]
        assert len(found) == 1, (marker, found)
        return found[0]

    def where(self, marker, function="<module>"):
        return f"prog.py:{self.line(marker)} in {function}"

    def run(self, *args, timeout=180, env=None):
        proc = subprocess.run([sys.executable, str(self.path), *map(str, args)], cwd=self.dir,
                              capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else dict(os.environ, **env))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        results = [ln[len("RESULT "):] for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        assert len(results) == 1, proc.stdout[-3000:]
        return json.loads(results[0])


def run_program(tmp_path, body, *args):
    program = Program(tmp_path, body)
    return program, program.run(*args)


def describes(description, op, where):
    """Whether a node's description ("aten::sin [4x8] (prog.py:7 in f)") names `op`
    issued at `where`; what stands between the two (input shapes) is not compared."""
    return description.startswith(op + " ") and description.endswith(f"({where})")


def branches_at(stats, op, where):
    """The ways of each branch point at `op` issued at `where`."""
    return [b["ways"] for b in stats["branch_points_at"] if describes(b["where"], op, where)]


def report_block(report, op, where, ways):
    """The lines the report lists under the branch point at `op` issued at `where`."""
    suffix = f" -> {ways} ways:"
    lines = report.splitlines()
    starts = [i for i, ln in enumerate(lines)
              if ln.strip().endswith(suffix) and describes(ln.strip()[:-len(suffix)], op, where)]
    assert len(starts) == 1, (op, where, report)
    indent = len(lines[starts[0]]) - len(lines[starts[0]].lstrip())
    block = []
    for ln in lines[starts[0] + 1:]:
        if len(ln) - len(ln.lstrip()) <= indent:
            break
        block.append(ln.strip())
    return block


def sync_entry(stats, op, where):
    found = [s for s in stats["sync_points"] if s["op"] == op and s["where"] == where]
    assert len(found) == 1, (op, where, stats["sync_points"])
    return found[0]


def assert_straight_line(stats, iterations):
    """One path, merged `iterations` times, identical every time."""
    per = stats["ops_per_iteration"]
    assert stats["iterations"] == iterations
    assert len(per) == iterations and len(set(per)) == 1, per
    assert stats["branch_points"] == 0 and stats["branch_points_at"] == []
    assert stats["nodes"] == per[-1]
    assert stats["edges"] == stats["nodes"] + 1  # entry -> n1 -> ... -> nk -> exit
    assert stats["stable_for"] == iterations - 1  # only the first merge added anything
    assert stats["overflows"] == 0


# --- Branching on .item() ---------------------------------------------------------

BRANCH_ON_ITEM = """
def train(threshold, steps=6):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [torch.randn(8, 4), torch.randn(8, 4) * 10]  # mean |x|: about 0.8 and 8
    losses, paths = [], []
    for i in range(steps):
        x = batches[i % 2]
        scale = x.abs().mean()
        if scale.item() > threshold:  # <if>
            out = model(x) * 0.1  # <then>
            paths.append("then")
        else:
            out = torch.relu(model(x))  # <else>
            paths.append("else")
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return {"losses": losses, "params": params(model), "paths": paths}


threshold = float(sys.argv[1])
eager = train(threshold)
terra.enable("trace")
traced = train(threshold)
stats = terra.stats()
report = terra.report()
terra.disable()
emit(stats=stats, report=report, paths=traced["paths"], differ=differences(eager, traced))
"""


def test_branch_on_item_alternating_paths(tmp_path):
    program, r = run_program(tmp_path, BRANCH_ON_ITEM, 3.0)
    assert r["paths"] == ["else", "then"] * 3
    assert r["differ"] == []
    stats = r["stats"]
    assert stats["iterations"] == 5  # 6 steps; the first is the prologue
    assert stats["branch_points"] >= 1
    # The branch is taken right after the sync that decides it (.item() on the if line).
    if_line = program.where("if", "train")
    assert branches_at(stats, "aten::_local_scalar_dense", if_line) == [2]
    # The report lists both ways, each at its own line of the if/else.
    ways = report_block(r["report"], "aten::_local_scalar_dense", if_line, 2)
    assert len(ways) == 2, ways
    assert sum(program.where("then", "train") in w for w in ways) == 1, ways
    assert sum(program.where("else", "train") in w for w in ways) == 1, ways
    # .item() is a sync point at the if, once per step (the prologue's included).
    assert sync_entry(stats, "aten::_local_scalar_dense", program.where("if", "train"))["count"] == 6
    assert stats["sync_nodes"] >= 1


def test_fixed_path_has_no_branch_and_is_stable(tmp_path):
    program, r = run_program(tmp_path, BRANCH_ON_ITEM, -1.0)
    assert r["paths"] == ["then"] * 6
    assert r["differ"] == []
    stats = r["stats"]
    assert_straight_line(stats, iterations=5)
    assert sync_entry(stats, "aten::_local_scalar_dense", program.where("if", "train"))["count"] == 6
    # The sync after .item() splits the one path into two segments.
    assert stats["sync_nodes"] == 1
    assert stats["segments"] == 2


# --- The TraceGraph's shape for programs of known structure ---------------------

STRAIGHT_LINE_MLP = """
from terra import _C

steps = int(sys.argv[1])
terra.enable("trace")
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1, foreach=True)
x = torch.randn(8, 4)
y = torch.randn(8, 2)


def step():
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


setup_ops = terra.stats()["ops_in_current"]
for _ in range(steps):
    step()
stats = terra.stats()
terra.disable()
# One more step under the test recorder of the interception layer: the ops one
# iteration issues, counted by other means than the tracer (which ignores the
# profiler's record_function markers around zero_grad and step).
_C._intercept_start()
step()
names = [n for n in _C._intercept_stop() if not n.startswith("profiler::")]
emit(stats=stats, setup_ops=setup_ops, ops_one_step=len(names))
"""


def test_straight_line_mlp_graph_shape(tmp_path):
    program = Program(tmp_path, STRAIGHT_LINE_MLP)
    short = program.run(3)
    long = program.run(6)
    for r, steps in ((short, 3), (long, 6)):
        stats = r["stats"]
        assert_straight_line(stats, iterations=steps - 1)
        assert stats["ops_per_iteration"][-1] == r["ops_one_step"]
        assert stats["segments"] == 1 and stats["longest_segment"] == stats["nodes"]
        assert stats["sync_points"] == [] and stats["syncs"] == 0
        # The prologue is the set-up plus the first step, which issues the same ops.
        assert r["setup_ops"] > 0
        assert stats["prologue_ops"] == r["setup_ops"] + r["ops_one_step"]
        assert stats["ops"] == stats["prologue_ops"] + sum(stats["ops_per_iteration"])
        assert stats["ops_in_current"] == 0
    for key in ("nodes", "edges", "segments"):
        assert short["stats"][key] == long["stats"][key], key


PARITY_BRANCH = """
steps = 6
terra.enable("trace")
x = torch.randn(4, 8)
terra.iteration()  # ends the prologue (the set-up)
for i in range(steps):
    y = x.sin()  # <sin>
    if i % 2 == 0:
        z = y * 2  # <mul>
    else:
        z = y + 1  # <add>
    out = z.sum()  # <sum>
    terra.iteration()
stats = terra.stats()
dot = terra.dot()
terra.disable()
emit(stats=stats, dot=dot)
"""


def test_parity_branch_graph_shape(tmp_path):
    program, r = run_program(tmp_path, PARITY_BRANCH)
    stats = r["stats"]
    # sin -> (mul | add) -> sum: 4 nodes; entry->sin, sin->mul, sin->add, mul->sum,
    # add->sum, sum->exit: 6 edges; one branch point (sin) with 2 ways.
    assert stats["iterations"] == 6
    assert stats["ops_per_iteration"] == [3] * 6
    assert stats["prologue_ops"] == 1  # randn: normal_ on a fresh tensor
    assert stats["nodes"] == 4
    assert stats["edges"] == 6
    assert stats["branch_points"] == 1
    assert len(stats["branch_points_at"]) == 1
    assert branches_at(stats, "aten::sin", program.where("sin")) == [2]
    assert stats["segments"] == 4 and stats["longest_segment"] == 1  # a branch and a join
    assert stats["stable_for"] == 6 - 2  # the first two iterations each added a path
    assert stats["sync_points"] == []
    dot = r["dot"]
    assert dot.startswith("digraph")
    assert dot.count(" -> ") == 6
    for op, marker in (("aten::sin", "sin"), ("aten::mul.Tensor", "mul"),
                       ("aten::add.Tensor", "add"), ("aten::sum", "sum")):
        assert sum(label.startswith(op) and program.where(marker) in label
                   for label in re.findall(r'label="([^"]*)"', dot)) == 1, (op, dot)


# --- Loops with a varying trip count ---------------------------------------------

LOOP_NO_AUTOGRAD = """
import random

max_trip = int(sys.argv[1])
rng = random.Random(0)
trips = [1, max_trip] + [rng.randint(1, max_trip) for _ in range(8)]
terra.enable("trace")
torch.manual_seed(0)
w = torch.randn(8, 8) * 0.3
h0 = torch.randn(4, 8)
terra.iteration()
for trip in trips:
    h = h0
    for _ in range(trip):
        h = h @ w  # <mm>
        h = torch.tanh(h)  # <tanh>
    out = h.sum()  # <sum>
    terra.iteration()
stats = terra.stats()
terra.disable()
emit(stats=stats, trips=trips)
"""


def test_loop_trip_count_does_not_grow_the_graph(tmp_path):
    program = Program(tmp_path, LOOP_NO_AUTOGRAD)
    runs = {m: program.run(m) for m in (3, 8)}
    for max_trip, r in runs.items():
        stats = r["stats"]
        assert max(r["trips"]) == max_trip and min(r["trips"]) == 1
        assert stats["iterations"] == len(r["trips"])
        assert stats["ops_per_iteration"] == [2 * t + 1 for t in r["trips"]]
        # mm, tanh, sum; entry->mm, mm->tanh, tanh->mm (back edge), tanh->sum, sum->exit.
        assert stats["nodes"] == 3
        assert stats["edges"] == 5
        assert len(stats["branch_points_at"]) == 1
        assert branches_at(stats, "aten::tanh", program.where("tanh")) == [2]
        # Trip 1 adds the straight path, the first longer trip the back edge.
        assert stats["stable_for"] == stats["iterations"] - 2
    assert runs[3]["stats"]["nodes"] == runs[8]["stats"]["nodes"]


LOOP_WITH_BACKWARD = """
import random

max_trip = int(sys.argv[1])


def train():
    torch.manual_seed(0)
    w = (torch.randn(8, 8) * 0.3).requires_grad_()
    opt = torch.optim.SGD([w], lr=0.01)
    h0 = torch.randn(4, 8)
    rng = random.Random(0)
    trips = [1, 1, max_trip] + [rng.randint(1, max_trip) for _ in range(8)] + [1, max_trip]
    losses = []
    for trip in trips:
        h = h0
        for _ in range(trip):
            h = h @ w  # <mm>
            h = torch.tanh(h)  # <tanh>
        loss = h.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return {"losses": losses, "w": w.detach().clone(), "trips": trips}


eager = train()
terra.enable("trace")
traced = train()
stats = terra.stats()
terra.disable()
emit(stats=stats, trips=traced["trips"], differ=differences(eager, traced))
"""


def test_loop_trip_count_with_backward_does_not_grow_the_graph(tmp_path):
    program = Program(tmp_path, LOOP_WITH_BACKWARD)
    runs = {m: program.run(m) for m in (3, 8)}
    for max_trip, r in runs.items():
        assert max(r["trips"]) == max_trip
        assert r["differ"] == []
        stats = r["stats"]
        assert stats["iterations"] == len(r["trips"]) - 1
        assert len(set(stats["ops_per_iteration"])) > 1  # trip counts differ, op counts too
        assert stats["branch_points"] >= 1
        assert branches_at(stats, "aten::tanh", program.where("tanh", "train")) == [2]
    # Forward and backward loop bodies recur as the same nodes, whatever the trip count.
    for key in ("nodes", "edges", "branch_points"):
        assert runs[3]["stats"][key] == runs[8]["stats"][key], key


# --- numpy between ops -------------------------------------------------------------

NUMPY_BETWEEN_OPS = """
def train(steps=5):
    torch.manual_seed(0)
    enc = nn.Linear(6, 5)
    head = nn.Linear(5, 1)
    opt = torch.optim.SGD(list(enc.parameters()) + list(head.parameters()), lr=0.05)
    losses, features = [], []
    for _ in range(steps):
        x = torch.randn(8, 6)
        y = torch.randn(8, 1)
        with torch.no_grad():
            f = torch.tanh(enc(x))
        a = f.numpy()  # <numpy>
        a = (a - a.mean(axis=0)) / (a.std(axis=0) + 1e-3) * 0.5 + a ** 2
        g = torch.from_numpy(a)
        features.append(g.clone())
        pred = head(g) + enc(x).sum(dim=1, keepdim=True) * 0.01
        loss = nn.functional.mse_loss(pred, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return {"losses": losses, "features": features, "params": params(enc, head)}


eager = train()
terra.enable("trace")
traced = train()
stats = terra.stats()
terra.disable()
emit(stats=stats, differ=differences(eager, traced))
"""


def test_numpy_between_ops_bit_identical_and_a_sync_point(tmp_path):
    program, r = run_program(tmp_path, NUMPY_BETWEEN_OPS)
    assert r["differ"] == []
    stats = r["stats"]
    assert stats["iterations"] == 4
    assert sync_entry(stats, "numpy", program.where("numpy", "train"))["count"] == 5
    assert stats["sync_nodes"] >= 1


# --- Results are eager's, bit for bit ----------------------------------------------

OPTIMIZER_PROGRAM = """
opt_name, opt_kwargs = sys.argv[1], json.loads(sys.argv[2])
clip, data_add = sys.argv[3] == "1", sys.argv[4] == "1"


def train(steps=4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 4))
    opt = getattr(torch.optim, opt_name)(model.parameters(), lr=0.05, **opt_kwargs)
    torch.manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 16)
        target = torch.randn(8, 4)
        loss = nn.functional.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        if data_add:
            with torch.no_grad():
                for p in model.parameters():
                    p.data.add_(1e-3)
        losses.append(loss.detach())
    state = [v.clone() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return {"losses": losses, "params": params(model), "optimizer_state": state}


eager = train()
terra.enable("trace")
traced = train()
stats = terra.stats()
terra.disable()
emit(stats=stats, differ=differences(eager, traced))
"""

OPTIMIZERS = [
    ("SGD", {"momentum": 0.9, "foreach": True}),
    ("SGD", {"momentum": 0.9, "foreach": False}),
    ("Adam", {"foreach": True}),
    ("Adam", {"foreach": False}),
    ("AdamW", {"foreach": True}),
    ("AdamW", {"foreach": False}),
]


@pytest.mark.parametrize("clip_and_data_add", [False, True], ids=["plain", "clip+data_add"])
@pytest.mark.parametrize("opt_name,opt_kwargs", OPTIMIZERS,
                         ids=[f"{n}-foreach={k['foreach']}" for n, k in OPTIMIZERS])
def test_optimizer_results_bit_identical(tmp_path, opt_name, opt_kwargs, clip_and_data_add):
    flag = "1" if clip_and_data_add else "0"
    _, r = run_program(tmp_path, OPTIMIZER_PROGRAM, opt_name, json.dumps(opt_kwargs), flag, flag)
    assert r["differ"] == []
    stats = r["stats"]
    assert stats["iterations"] == 3
    assert stats["ops_per_iteration"][-1] > 50
    assert stats["overflows"] == 0


LBFGS_PROGRAM = """
def train(steps=4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4, history_size=3)
    x = torch.randn(16, 5)
    y = torch.randn(16, 1)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    losses = [opt.step(closure).detach().clone() for _ in range(steps)]
    return {"losses": losses, "params": params(model), "closure_calls": len(calls)}


eager = train()
terra.enable("trace")
traced = train()
stats = terra.stats()
terra.disable()
emit(stats=stats, calls=traced["closure_calls"], differ=differences(eager, traced))
"""


def test_lbfgs_closure_bit_identical(tmp_path):
    _, r = run_program(tmp_path, LBFGS_PROGRAM)
    assert r["differ"] == []
    assert r["calls"] > 4  # the closure ran several times per step
    stats = r["stats"]
    assert stats["iterations"] == 3  # one per step() (the closure's calls are inside it)
    assert stats["syncs"] > 0  # LBFGS reads losses and norms with .item()


FACTORIES_VIEWS_RANDOM = """
def run(steps=4):
    torch.manual_seed(0)
    out = {}
    for i in range(steps):
        a = torch.randn(5, 6)
        b = torch.rand(5, 6)
        n = torch.randint(0, 10, (6,))
        perm = torch.randperm(6)
        e = torch.empty(5, 6).normal_(0, 2)
        z = torch.zeros(5, 6)
        z.uniform_(-1, 1)
        full = torch.full((5,), 3.0)
        like = torch.randn_like(a) + torch.rand_like(b)
        dropped = nn.functional.dropout(a, 0.5, training=True)
        bern = torch.bernoulli(b)
        multi = torch.multinomial(b[0].abs() + 0.1, 3)
        v = a[1:4, ::2]  # a strided view
        v.mul_(2).add_(1)  # in place through it
        a.t()[0].sub_(0.5)  # in place through a transposed view
        strided = a.view(30)[::3].clone()
        expanded = a.unsqueeze(0).expand(2, 5, 6).contiguous()
        a.index_add_(0, torch.tensor([0, 2]), torch.ones(2, 6))
        m = torch.arange(12.0).reshape(3, 4)
        m.transpose(0, 1).mul_(torch.rand(4, 3))
        m.diagonal().zero_()
        parts = torch.split(m, 2, dim=1)
        parts[1].copy_(parts[0] * 3)
        out[i] = [a, b, n, perm, e, z, full, like, dropped, bern, multi, strided, expanded, m]
        terra.iteration()
    out["rng_state"] = torch.get_rng_state()
    return out


eager = run()
terra.enable("trace")
traced = run()
stats = terra.stats()
terra.disable()
emit(stats=stats, differ=differences(eager, traced))
"""


def test_factories_views_inplace_and_random_bit_identical(tmp_path):
    _, r = run_program(tmp_path, FACTORIES_VIEWS_RANDOM)
    # Same tensors, and the same RNG state after: tracing draws no random numbers.
    assert r["differ"] == []
    stats = r["stats"]
    assert stats["iterations"] == 3  # 4 marks; the first ends the prologue
    assert len(set(stats["ops_per_iteration"])) == 1
    assert stats["ops_per_iteration"][0] > 20


# --- What is recorded --------------------------------------------------------------

CUSTOM_FUNCTION_AND_NO_GRAD = """
class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * torch.sin(x).cos()  # distinctive ops


def ops():
    return terra.stats().get("ops", 0)  # {} before tracing starts


def body(x, counts):
    o0 = ops()
    y = Square.apply(x)
    o1 = ops()
    s = y.sum()
    o2 = ops()
    s.backward()
    o3 = ops()
    with torch.no_grad():
        z = torch.exp(x)
        z.add_(1)
    o4 = ops()
    counts.append({"forward": o1 - o0, "backward": o3 - o2, "no_grad": o4 - o3})
    return [x.grad.clone(), z]


torch.manual_seed(0)
x = torch.randn(5, requires_grad=True)
eager = body(x, [])
terra.enable("trace")
counts = []
terra.iteration()
for _ in range(3):
    x.grad = None
    traced = body(x, counts)
    terra.iteration()
stats = terra.stats()
dot = terra.dot()
terra.disable()
emit(stats=stats, counts=counts, dot=dot, differ=differences({"r": eager}, {"r": traced}))
"""


def test_custom_function_and_no_grad_are_recorded(tmp_path):
    _, r = run_program(tmp_path, CUSTOM_FUNCTION_AND_NO_GRAD)
    assert r["differ"] == []
    for c in r["counts"]:
        assert c["forward"] == 1  # x * x inside Function.forward
        assert c["backward"] >= 4  # grad * 2, sin, cos, the product, plus the engine's own
        assert c["no_grad"] == 2  # exp, add_
    assert len({json.dumps(c, sort_keys=True) for c in r["counts"]}) == 1
    dot = r["dot"]
    for op in ("aten::sin", "aten::cos", "aten::exp", "aten::add_.Tensor"):
        assert op in dot, op
    stats = r["stats"]
    assert stats["iterations"] == 3 and len(set(stats["ops_per_iteration"])) == 1


ITERATION_WITHOUT_OPTIMIZER = """
terra.enable("trace")
x = torch.randn(4, 4)
w = torch.randn(4, 4)
before_mark = terra.stats()
terra.iteration()  # the first mark ends the prologue
for _ in range(5):
    h = torch.relu(x @ w)
    x = h / (h.norm() + 1)
    terra.iteration()
tail = x * 2  # after the last mark: the current, unfinished iteration
stats = terra.stats()
terra.disable()
emit(before=before_mark, stats=stats)
"""


def test_iteration_marks_without_an_optimizer(tmp_path):
    _, r = run_program(tmp_path, ITERATION_WITHOUT_OPTIMIZER)
    before = r["before"]
    assert before["iterations"] == 0 and before["ops_in_current"] == 2  # two randn
    stats = r["stats"]
    assert stats["iterations"] == 5
    per = stats["ops_per_iteration"]
    assert len(per) == 5 and len(set(per)) == 1
    assert per[0] >= 5  # mm, relu, norm, add, div
    assert stats["prologue_ops"] == 2
    assert stats["ops_in_current"] == 1
    assert stats["ops"] == 2 + sum(per) + 1
    assert stats["branch_points"] == 0 and stats["nodes"] == per[0]


ITERATION_OVERRIDES_OPTIMIZER = """
terra.enable("trace")
torch.manual_seed(0)
model = nn.Linear(4, 3)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x = torch.randn(8, 4)


def step():
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


step()  # creates the momentum buffers, so that later steps all run the same ops
setup_ops = terra.stats()["ops_in_current"]
terra.iteration()  # from now on only these marks end iterations
for i in range(8):
    step()
    if i % 2 == 1:
        terra.iteration()
o = terra.stats()["ops"]
step()
one_step = terra.stats()["ops"] - o
stats = terra.stats()
terra.disable()
emit(stats=stats, setup_ops=setup_ops, one_step=one_step)
"""


def test_iteration_marks_override_optimizer_steps(tmp_path):
    _, r = run_program(tmp_path, ITERATION_OVERRIDES_OPTIMIZER)
    stats = r["stats"]
    # The step before the first mark ended the prologue as an optimizer step;
    # after the mark, two steps make one iteration.
    assert stats["iterations"] == 4
    assert stats["ops_per_iteration"] == [2 * r["one_step"]] * 4
    assert stats["ops_in_current"] == r["one_step"]  # the step after the last mark


PRINT_AND_SAVE = """
import contextlib
import io


def run(path, steps=3):
    t = torch.arange(6.0).reshape(2, 3)
    text = io.StringIO()
    terra.iteration()
    for i in range(steps):
        u = t * (i + 1)
        with contextlib.redirect_stdout(text):
            print(u)  # <print>
            print(f"{u.sum():.3f}")  # <format>
        torch.save({"u": u, "both": [u, t]}, path)  # <save>
        values = u.tolist()  # <tolist>
        terra.iteration()
    return {"text": text.getvalue(), "values": values}


eager = run(sys.argv[1] + ".eager")
terra.enable("trace")
traced = run(sys.argv[1] + ".traced")
stats = terra.stats()
terra.disable()
# Loaded untraced: torch.load reaches untyped_storage() of the tensors it builds.
eager["saved"] = torch.load(sys.argv[1] + ".eager")["both"]
traced["saved"] = torch.load(sys.argv[1] + ".traced")["both"]
emit(stats=stats, differ=differences(eager, traced))
"""


def test_print_and_save_are_sync_points_at_their_lines(tmp_path):
    program, r = run_program(tmp_path, PRINT_AND_SAVE, tmp_path / "saved.pt")
    assert r["differ"] == []  # printed text, saved tensors and values as without tracing
    stats = r["stats"]
    assert sync_entry(stats, "print", program.where("print", "run"))["count"] == 3
    assert sync_entry(stats, "format", program.where("format", "run"))["count"] == 3
    # torch.save reads each distinct tensor it finds once: u and t.
    assert sync_entry(stats, "save", program.where("save", "run"))["count"] == 6
    assert sync_entry(stats, "tolist", program.where("tolist", "run"))["count"] == 3
    assert {s["op"] for s in stats["sync_points"]} == {"print", "format", "save", "tolist"}
    assert stats["syncs"] == 3 + 3 + 6 + 3
    # Printing's own ops (dozens) ran with interception suspended: u * (i + 1) and
    # u.sum() are the iteration's only ops.
    assert stats["ops_per_iteration"] == [2, 2, 2]


# --- The API ---------------------------------------------------------------------------

ENABLE_ERRORS = """
errors = {}
for args, kwargs in ((("bogus",), {}), (("trace",), {"stable_after": 0})):
    try:
        terra.enable(*args, **kwargs)
        errors[repr((args, kwargs))] = None
    except ValueError as e:
        errors[repr((args, kwargs))] = str(e)
on_after_errors = terra.enabled()
terra.enable("trace")
emit(errors=errors, on_after_errors=on_after_errors, on=terra.enabled())
"""


def test_enable_unknown_mode_raises_value_error(tmp_path):
    _, r = run_program(tmp_path, ENABLE_ERRORS)
    bogus, zero = r["errors"].values()
    assert bogus is not None and "'bogus'" in bogus and "trace" in bogus
    assert zero is not None and "stable_after" in zero
    assert r["on_after_errors"] is False  # a refused enable leaves tracing off
    assert r["on"] is True


ENABLE_TWICE = """
terra.enable("trace")
try:
    terra.enable("trace")
    error = None
except RuntimeError as e:
    error = str(e)
still_on = terra.enabled()
terra.disable()
off = terra.enabled()
terra.enable("trace")  # allowed again after disable
emit(error=error, still_on=still_on, off=off, on_again=terra.enabled())
"""


def test_enable_twice_raises(tmp_path):
    _, r = run_program(tmp_path, ENABLE_TWICE)
    assert r["error"] is not None and "already enabled" in r["error"]
    assert r["still_on"] is True
    assert r["off"] is False
    assert r["on_again"] is True


REPORT_AND_DOT = """
before = {"stats": terra.stats(), "report": terra.report(), "dot": terra.dot()}
terra.enable("trace")
torch.manual_seed(0)
model = nn.Linear(3, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(4, 3)
for _ in range(4):
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    value = loss.item()  # <item>
stats = terra.stats()
report = terra.report()
dot = terra.dot()
terra.disable()
emit(before=before, stats=stats, report=report, dot=dot, report_after_disable=terra.report())
"""


def test_report_and_dot_text(tmp_path):
    program, r = run_program(tmp_path, REPORT_AND_DOT)
    assert r["before"] == {"stats": {}, "report": "", "dot": ""}
    report = r["report"]
    assert report.startswith("Terra tracing report (rank 0, mode trace)")
    assert "TraceGraph:" in report and "sync points" in report
    stats = r["stats"]
    assert f"TraceGraph: {stats['nodes']} nodes, {stats['edges']} edges" in report
    assert program.where("item") in report
    assert r["dot"].startswith("digraph")
    assert r["dot"].count(" -> ") == stats["edges"]
    # What was recorded stays available after disable.
    assert r["report_after_disable"].startswith(report)
    assert "stopped by terra.disable()" in r["report_after_disable"]


AUTO_MODE = """
terra.enable("auto", stable_after=2)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(8, 4)
on = []
for _ in range(7):
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    on.append(terra.enabled())
emit(on=on, stats=terra.stats(), report=terra.report())
"""


def test_auto_mode_without_the_probe_stops_once_the_graph_is_stable(tmp_path):
    r = Program(tmp_path, AUTO_MODE).run(env={"TERRA_AUTO_COEXEC": "0"})
    # Step 1 is the prologue, step 2 the first merge (a change), steps 3 and 4 change
    # nothing: stable for 2, so tracing stops at step 4.
    assert r["on"] == [True, True, True, False, False, False, False]
    stats = r["stats"]
    assert stats["iterations"] == 3 and stats["stable_for"] == 2
    assert stats["ops_in_current"] == 0  # nothing recorded after stopping
    assert "tracing stopped after the TraceGraph was unchanged for 2 iterations" in r["report"]


AUTO_PROBE = """
import os


def train(steps):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = torch.randn(32, 16)
    losses, on = [], []
    for _ in range(steps):
        loss = model(data).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        on.append(terra.enabled())
    return losses, [p.detach().clone() for p in model.parameters()], on


steps = int(os.environ["STEPS"])
eager_losses, eager_params, _ = train(steps)
terra.enable("auto", stable_after=2)
losses, params, on = train(steps)
stats = terra.stats()
emit(same=losses == eager_losses and all(torch.equal(a, b) for a, b in zip(params, eager_params)),
     on=on, auto=stats.get("auto"), coexec=stats.get("coexec"), report=terra.report())
"""


@pytest.mark.parametrize("blocks", [3, 5])
def test_auto_mode_times_coexecution_against_eager_and_keeps_the_faster(tmp_path, blocks):
    # Steps 0 (prologue) to 3 trace, stable for 2 at the boundary of step 3; the
    # probe runs `blocks` blocks of 3 iterations from step 4, co-execution first
    # and last, and decides at the boundary of its last iteration.
    length, steps = 3, 4 + blocks * 3 + 4
    r = Program(tmp_path, AUTO_PROBE).run(env={"STEPS": str(steps), "TERRA_AUTO_PROBE_BLOCKS": str(blocks)})
    assert r["same"], "auto mode changed the results"
    auto = r["auto"]
    c, e = auto["coexec_iteration_s"], auto["eager_iteration_s"]
    assert (len(c), len(e)) == ((blocks + 1) // 2, blocks // 2), auto
    assert auto["probe_started_at_iteration"] == 4
    assert auto["decided_at_iteration"] == 4 + blocks * length
    faster = sum(c) / len(c) <= sum(e) / len(e) * 0.97
    assert auto["chosen"] == ("coexec" if faster else "eager"), auto
    assert r["coexec"]["fallbacks"] == 0, r["coexec"]  # each switch back starts at the graph's root
    probed = (blocks + 1) // 2 * length
    decided = 4 + blocks * length
    if auto["chosen"] == "coexec":
        # Co-executed after the probe too, to the end.
        assert r["coexec"]["iterations"] == probed + steps - decided, r["coexec"]
        assert r["on"][-1] is True
        assert "the rest was co-executed" in r["report"], r["report"]
    else:
        assert r["coexec"]["iterations"] == probed, r["coexec"]
        assert r["on"][decided - 1:] == [False] * (steps - decided + 1), r["on"]
        assert "the rest ran eagerly" in r["report"], r["report"]
        # Says when the executor's threads and the program's overfill the cores.
        overfilled = auto["intra_op_threads"] + 1 > auto["cores"]
        assert ("they share a core" in r["report"]) == overfilled, (auto, r["report"])
    assert auto["cores"] == len(os.sched_getaffinity(0)) and auto["intra_op_threads"] >= 1, auto
    # During the probe's eager blocks nothing is intercepted.
    for b in range(1, blocks, 2):
        assert r["on"][4 + b * length: 4 + (b + 1) * length - 1] == [False] * (length - 1), (b, r["on"])
    assert "auto: co-execution took" in r["report"], r["report"]


def test_auto_mode_keeps_backward_segments_learned_before_an_eager_block(tmp_path):
    # The probe stops co-execution for eager blocks and resumes it on the same
    # graph: the backward segment learned in the first co-executed block is
    # replayed in the later ones, not learned again in each.
    blocks, length = 5, 3
    steps = 4 + blocks * length + 4
    r = Program(tmp_path, AUTO_PROBE).run(env={"STEPS": str(steps), "TERRA_AUTO_PROBE_BLOCKS": str(blocks)})
    assert r["same"], "auto mode with backward segments changed the results"
    coexec = r["coexec"]
    assert coexec["backward_learned"] == 1, coexec
    # Two learnings (the first co-executed iterations), then every one replays.
    assert coexec["backward_replayed"] == coexec["iterations"] - 2, coexec


CHURN = """
import os
terra.enable("auto")
torch.manual_seed(0)
model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sizes = [int(n) for n in os.environ["SIZES"].split(",")]
on = []
for n in sizes:
    loss = model(torch.randn(n, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    on.append(terra.enabled())
emit(on=on, stats=terra.stats(), report=terra.report())
"""


@pytest.mark.parametrize("sizes, gives_up_after", [
    # A new batch size every step (one repeat allowed in the window of 6): given
    # up after iteration 6 (0-based; 0 is the prologue), not after 20.
    ("8,9,10,11,10,12,13,14,15,16,17,18", 7),
    # Two sizes taking turns: the graph learns both and is stable.
    ("8,9,8,9,8,9,8,9,8,9,8,9", None),
])
def test_a_graph_that_keeps_changing_is_given_up_early(tmp_path, sizes, gives_up_after):
    program = Program(tmp_path, CHURN)
    r = program.run(env={"SIZES": sizes, "TERRA_AUTO_COEXEC": "0"})  # the churn rule alone
    if gives_up_after is None:
        assert "still changing" not in r["report"], r["report"]
        assert r["on"][-1] is False  # stopped as stable
        return
    assert r["on"] == [True] * (gives_up_after - 1) + [False] * (12 - gives_up_after + 1), r["on"]
    assert r["stats"]["changed_at_iterations"] == [1, 2, 3, 5, 6], r["stats"]
    assert ("the TraceGraph was still changing (it changed in 5 of 6 traced iterations, "
            "at iterations 1, 2, 3, 5, 6") in r["report"], r["report"]


# --- Fed scalars: values that change every step do not make new nodes -------------

FED_SCALARS = """
def train(steps=8):
    torch.manual_seed(0)
    data = torch.randn(64, 4)
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, foreach=False)
    losses = []
    for i in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.01 * (0.9 ** i)  # a schedule: a new float every step
        window = data[4 * i:4 * i + 8]  # a slice that moves: new ints every step
        loss = model(window).pow(2).mean() * (1.0 + 0.1 * i)  # a new Python float
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return {"losses": losses, "params": params(model)}


eager = train()
terra.enable("trace")
traced = train()
stats = terra.stats()
terra.disable()
emit(stats=stats, differ=differences(eager, traced))
"""


def test_changing_python_scalars_are_fed_not_new_nodes(tmp_path):
    # Adam's step size and bias corrections, a learning-rate schedule, a loss
    # weight and a moving slice all change every step; none may grow the
    # TraceGraph, or co-execution would never start.
    _, r = run_program(tmp_path, FED_SCALARS)
    assert r["differ"] == []
    stats = r["stats"]
    per = stats["ops_per_iteration"]
    assert stats["iterations"] == 7 and len(set(per)) == 1, per
    # Only the first merge added anything. (Single-tensor Adam loops over the
    # weight and the bias in Python: that loop is a real branch, kept.)
    assert stats["stable_for"] == 6
    assert stats["nodes"] <= per[-1]


# --- TERRA_STATS_JSON: stats() written at exit -------------------------------------

STATS_AT_EXIT = """
terra.enable("coexec", rank=int(sys.argv[1]))
torch.manual_seed(0)
model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(8, 4)
for _ in range(8):
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    loss.item()
emit(stats=terra.stats())
"""


@pytest.mark.parametrize("name, rank, written", [
    ("stats.json", 0, "stats.json"),
    ("stats.json", 1, None),  # without "{rank}" only rank 0 writes
    ("stats.{rank}.json", 1, "stats.1.json"),
])
def test_stats_json_written_at_exit(tmp_path, name, rank, written):
    program = Program(tmp_path, STATS_AT_EXIT)
    r = program.run(rank, env={"TERRA_STATS_JSON": str(tmp_path / name)})
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("stats"))
    assert files == ([written] if written else []), files
    if not written:
        return
    at_exit = json.loads((tmp_path / written).read_text())
    # Everything stats() held during the run, with the figures of the whole run.
    assert at_exit.keys() == r["stats"].keys()
    c = at_exit["coexec"]
    for key in ("submitted", "eager", "fetches", "executor_busy_s", "fetch_wait_s",
                "first_divergence", "iterations", "fallbacks", "phase"):
        assert key in c, key
    assert c["phase"] == "coexec"  # where the run ended, not the shutdown's "trace"
    assert c["iterations"] >= r["stats"]["coexec"]["iterations"] > 0
    assert c["submitted"] >= r["stats"]["coexec"]["submitted"] > 0
    assert c["executor_busy_s"] >= 0 and c["fetch_wait_s"] >= 0
