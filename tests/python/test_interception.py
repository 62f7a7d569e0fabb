"""Interception at the dispatcher: results bit-identical to eager, and what is seen.

Uses terra._C's test recorder (_intercept_start/_intercept_stop), which records
the ATen ops the calling thread runs; see docs/interception.md.
"""

import threading

import pytest
import torch
from torch import nn

import terra
from terra import _C


@pytest.fixture(autouse=True)
def _stop_interception():
    yield
    _C._intercept_stop()


def record(fn):
    """Runs fn intercepted; returns (fn's result, op names seen)."""
    _C._intercept_start()
    try:
        result = fn()
    finally:
        names = _C._intercept_stop()
    return result, names


def make_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4)
    )


def train(opt_name, opt_kwargs, steps=4, clip=False, data_add=False):
    """A few steps of an MLP; returns the parameters. Seeds fix data and dropout."""
    model = make_model(0)
    opt = getattr(torch.optim, opt_name)(model.parameters(), lr=0.05, **opt_kwargs)
    torch.manual_seed(1)
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
    return [p.detach().clone() for p in model.parameters()]


OPTIMIZERS = [
    ("SGD", {"momentum": 0.9, "foreach": True}),
    ("SGD", {"momentum": 0.9, "foreach": False}),
    ("Adam", {"foreach": True}),
    ("Adam", {"foreach": False}),
    ("AdamW", {"foreach": True}),
    ("AdamW", {"foreach": False}),
]


@pytest.mark.parametrize("opt_name,opt_kwargs", OPTIMIZERS, ids=lambda v: str(v))
@pytest.mark.parametrize("clip,data_add", [(False, False), (True, True)])
def test_training_bit_identical(opt_name, opt_kwargs, clip, data_add):
    eager = train(opt_name, opt_kwargs, clip=clip, data_add=data_add)
    traced, names = record(lambda: train(opt_name, opt_kwargs, clip=clip, data_add=data_add))
    assert len(names) > 100
    for e, t in zip(eager, traced):
        assert torch.equal(e, t)
    if opt_kwargs["foreach"]:
        assert any(n.startswith("aten::_foreach_") for n in names), names
    elif not clip:  # clip_grad_norm_ uses foreach ops of its own
        assert not any(n.startswith("aten::_foreach_") for n in names)


def test_dropout_same_mask_with_fixed_seed():
    x = torch.ones(1000)
    torch.manual_seed(3)
    eager = nn.functional.dropout(x, 0.5, training=True)
    torch.manual_seed(3)
    traced, names = record(lambda: nn.functional.dropout(x, 0.5, training=True))
    assert torch.equal(eager, traced)
    assert "aten::bernoulli_.float" in names


def test_backward_ops_seen():
    x = torch.randn(4, 8)
    w = torch.randn(8, 8, requires_grad=True)

    def step():
        torch.relu(x @ w).sum().backward()

    _, names = record(step)
    relu_bw = names.index("aten::threshold_backward")
    assert "aten::mm" in names[relu_bw:]  # the matmul's gradient
    assert _C._intercept_registration()["direct_kernels"] > 500


def test_foreach_seen_whole():
    ts = [torch.ones(3) for _ in range(4)]
    _, names = record(lambda: torch._foreach_add_(ts, 1.0))
    assert names == ["aten::_foreach_add_.Scalar"]


def test_inplace_views_factories_and_item():
    def body():
        a = torch.randn(4, 4)
        a.add_(1)
        v = a.view(16)[2:5]
        v.mul_(2)
        a.t().contiguous()
        return a.sum().item()

    _, names = record(body)
    for op in ["aten::normal_", "aten::add_.Tensor", "aten::view", "aten::slice.Tensor",
               "aten::mul_.Tensor", "aten::t", "aten::_local_scalar_dense"]:
        assert op in names, (op, names)


def test_custom_function_and_no_grad():
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * 2 * torch.sin(x).cos()  # distinctive ops

    x = torch.randn(5, requires_grad=True)

    def body():
        Square.apply(x).sum().backward()
        with torch.no_grad():
            torch.exp(x)

    _, names = record(body)
    assert "aten::mul.Tensor" in names
    assert "aten::sin" in names and "aten::cos" in names  # custom backward
    assert "aten::exp" in names  # under no_grad


def test_off_records_nothing_and_is_idempotent():
    a = torch.ones(8)
    assert not _C._intercept_enabled()
    a + a
    assert _C._intercept_count() == 0
    assert _C._intercept_stop() == []  # stop without start

    _C._intercept_start()
    a + a
    _C._intercept_start()  # again: keeps the same recording
    a * a
    assert _C._intercept_enabled()
    assert _C._intercept_count() == 2
    assert _C._intercept_stop() == ["aten::add.Tensor", "aten::mul.Tensor"]
    assert _C._intercept_stop() == []
    assert not _C._intercept_enabled()
    a + a
    assert _C._intercept_count() == 0


def test_other_threads_not_intercepted():
    a = torch.ones(8)
    _C._intercept_start()
    seen = []
    t = threading.Thread(target=lambda: (a + a, seen.append(_C._intercept_enabled())))
    t.start()
    t.join()
    a - a
    assert seen == [False]
    assert _C._intercept_stop() == ["aten::sub.Tensor"]


def test_terra_imports():
    assert terra._C is _C


def test_sparse_and_quantized_go_to_their_kernels():
    s = torch.randn(4, 4).relu().to_sparse()
    eager = (s + s).to_dense()
    traced, names = record(lambda: (s + s).to_dense())
    assert torch.equal(eager, traced)
    assert names[0] == "aten::add.Tensor"
    q = torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8)
    _, names = record(lambda: q.dequantize())
    assert names == ["aten::dequantize.self"]
