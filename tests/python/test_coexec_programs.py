"""Programs a demanding user writes, each run eagerly and then co-executed in one
process: losses, printed values and parameters must be bit-identical. Written as
adversarial probes of co-execution (sessions 13 and 14); those that found bugs are
scenarios in test_coexec.py, and these are the ones that passed, kept against
regressions. Each also checks that it co-executed, except the sparse one, whose shapes
change every step (tracing gives up)."""
import json
import os
import subprocess
import sys

import pytest

PROGRAMS = r'''
import io, json, sys
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
import terra


def params(*ms): return [p.detach().clone() for m in ms for p in m.parameters()]

def train_step(opt, loss, out):
    opt.zero_grad(); loss.backward(); opt.step()
    out.append(loss.item())

def sparse_embedding(steps):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 8, sparse=True); head = nn.Linear(8, 1)
    o1 = torch.optim.SparseAdam(list(emb.parameters()), lr=0.01); o2 = torch.optim.SGD(head.parameters(), lr=0.1)
    out = []
    for i in range(steps):
        idx = torch.randint(0, 50, (16,))
        loss = head(emb(idx)).pow(2).mean()
        o1.zero_grad(); o2.zero_grad(); loss.backward(); o1.step(); o2.step()
        out.append(loss.item())
    return out, params(emb, head)

def retain_and_grad(steps):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)); opt = torch.optim.SGD(m.parameters(), lr=0.05)
    out = []
    for i in range(steps):
        x = torch.randn(6, 4, requires_grad=True)
        y = m(x).pow(2).mean()
        (gx,) = torch.autograd.grad(y, x, retain_graph=True)
        loss = y + gx.pow(2).sum() * 0.0
        train_step(opt, loss, out)
    return out, params(m)

def freeze_midway(steps):
    torch.manual_seed(0)
    a, b = nn.Linear(4, 8), nn.Linear(8, 1); opt = torch.optim.Adam(list(a.parameters()) + list(b.parameters()), lr=0.01)
    out = []
    for i in range(steps):
        if i == steps // 2:
            for p in a.parameters(): p.requires_grad_(False)
        loss = b(torch.relu(a(torch.randn(5, 4)))).pow(2).mean()
        train_step(opt, loss, out)
    return out, params(a, b)

def numpy_writes_tensor(steps):
    torch.manual_seed(0)
    m = nn.Linear(3, 1); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    buf = torch.zeros(4, 3)
    out = []
    for i in range(steps):
        y = m(buf)  # reads buf; then numpy writes it in place
        loss = y.pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        buf.numpy()[:] = np.random.RandomState(i).randn(4, 3)
        out.append(loss.item())
    return out, params(m)

def view_inplace_on_param(steps):
    torch.manual_seed(0)
    m = nn.Linear(4, 3); opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    out = []
    for i in range(steps):
        loss = m(torch.randn(2, 4)).pow(2).sum()
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            m.weight[0].mul_(0.5)
            m.bias.data[1:].clamp_(-0.1, 0.1)
        out.append(loss.item())
    return out, params(m)

def history_stack(steps):
    torch.manual_seed(0)
    m = nn.Linear(4, 1); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    hist = []
    out = []
    for i in range(steps):
        loss = m(torch.randn(3, 4)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        hist.append(loss.detach())
        if i % 4 == 3:
            out.append(torch.stack(hist).mean().item())
    out.append(repr(torch.stack(hist)))
    return out, params(m)

def add_param_group(steps):
    torch.manual_seed(0)
    a, b = nn.Linear(4, 4), nn.Linear(4, 1); opt = torch.optim.SGD(a.parameters(), lr=0.1)
    out = []
    for i in range(steps):
        if i == 5:
            opt.add_param_group({"params": b.parameters(), "lr": 0.01})
        loss = b(a(torch.randn(3, 4))).pow(2).mean()
        train_step(opt, loss, out)
    return out, params(a, b)

def complex_and_ints(steps):
    torch.manual_seed(0)
    w = torch.randn(8, dtype=torch.cfloat, requires_grad=True); opt = torch.optim.SGD([w], lr=0.05)
    out = []
    for i in range(steps):
        x = torch.randn(8, dtype=torch.cfloat)
        k = torch.arange(8) % 3
        loss = (w * x).abs().pow(2)[k == 1].sum()
        train_step(opt, loss, out)
        out.append(int(k.sum()))
    return out, [w.detach().clone()]

def mha_and_weightnorm(steps):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    lin = nn.utils.parametrizations.weight_norm(nn.Linear(8, 1))
    opt = torch.optim.AdamW(list(mha.parameters()) + list(lin.parameters()), lr=0.01)
    out = []
    for i in range(steps):
        x = torch.randn(2, 5, 8)
        y, attn = mha(x, x, x, need_weights=True)
        loss = lin(y).pow(2).mean() + attn.var()
        train_step(opt, loss, out)
    return out, params(mha, lin)

def data_dependent_branch(steps):
    torch.manual_seed(0)
    m = nn.Linear(4, 1); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    out = []
    for i in range(steps):
        x = torch.randn(6, 4)
        y = m(x)
        if y.mean() > 0:   # bool(t): a fetch, and two paths
            loss = y.pow(2).mean()
        else:
            loss = (y - 1).abs().mean()
        train_step(opt, loss, out)
    return out, params(m)

def generator_and_reseed(steps):
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1)); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    out = []
    for i in range(steps):
        if i == 6: torch.manual_seed(123)
        idx = torch.randperm(20, generator=g)[:5]
        x = torch.randn(20, 4, generator=g)[idx]
        loss = m(x).pow(2).mean()
        train_step(opt, loss, out)
    return out, params(m)

def deepcopy_target(steps):
    import copy
    torch.manual_seed(0)
    q = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)); opt = torch.optim.Adam(q.parameters(), lr=0.01)
    target = copy.deepcopy(q)
    out = []
    for i in range(steps):
        s, s2 = torch.randn(8, 4), torch.randn(8, 4)
        with torch.no_grad():
            tgt = target(s2).max(1).values * 0.9 + 1.0
        loss = F.smooth_l1_loss(q(s).gather(1, torch.zeros(8, 1, dtype=torch.long)).squeeze(1), tgt)
        opt.zero_grad(); loss.backward(); opt.step()
        if i % 3 == 2:
            target = copy.deepcopy(q)
        out.append(loss.item())
    return out, params(q, target)

def amp_scaler(steps):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    out = []
    for i in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(torch.randn(6, 4)).float().pow(2).mean()
        opt.zero_grad(); scaler.scale(loss).backward(); scaler.unscale_(opt)
        nn.utils.clip_grad_value_(m.parameters(), 0.5)
        scaler.step(opt); scaler.update()
        out.append(loss.item()); out.append(scaler.get_scale())
    return out, params(m)

def checkpointing(steps):
    from torch.utils.checkpoint import checkpoint
    torch.manual_seed(0)
    a, b = nn.Sequential(nn.Linear(4, 16), nn.Tanh()), nn.Linear(16, 1); opt = torch.optim.SGD([*a.parameters(), *b.parameters()], lr=0.1)
    out = []
    for i in range(steps):
        h = checkpoint(a, torch.randn(5, 4), use_reentrant=False)
        loss = b(h).pow(2).mean()
        train_step(opt, loss, out)
    return out, params(a, b)

def formats_and_lists(steps):
    torch.manual_seed(0)
    m = nn.Linear(3, 2); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    out = []
    for i in range(steps):
        y = m(torch.randn(4, 3))
        loss = y.pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        out.append(f"{loss:.6f}"); out.append(str(y.detach()[0])); out.append(y.argmax(1).tolist())
        out.append(m.weight.grad.norm().item()); out.append(repr(m.bias))
        m.weight.grad.mul_(0.0)  # in-place on .grad after the step
    return out, params(m)

def buffers_and_counters(steps):
    class Net(nn.Module):
        def __init__(self):
            super().__init__(); self.l = nn.Linear(4, 1); self.register_buffer("seen", torch.zeros((), dtype=torch.long))
            self.register_buffer("avg", torch.zeros(4))
        def forward(self, x):
            if self.training:
                self.seen += x.shape[0]
                self.avg.mul_(0.9).add_(x.mean(0), alpha=0.1)
            return self.l(x - self.avg)
    torch.manual_seed(0)
    m = Net(); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    out = []
    for i in range(steps):
        loss = m(torch.randn(6, 4)).pow(2).mean()
        opt.zero_grad(set_to_none=False); loss.backward(); opt.step()
        out.append(loss.item())
        if i % 5 == 4:
            m.eval()
            with torch.no_grad():
                acc = (m(torch.randn(6, 4)) > 0).float().mean().item()
            out.append(acc); m.train()
    out.append(int(m.seen))
    return out, params(m) + [m.avg.clone()]

class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k):
        ctx.k = k
        return x * k
    @staticmethod
    def backward(ctx, g):
        return g * ctx.k, None

def custom_function_and_hooks(steps):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    stats = []
    h = m[1].register_forward_hook(lambda mod, inp, outp: stats.append(float(outp.mean())))
    out = []
    for i in range(steps):
        y = Scale.apply(m(torch.randn(5, 4)), 0.5 + 0.01 * i)
        loss = y.pow(2).mean()
        train_step(opt, loss, out)
    h.remove()
    return out + stats, params(m)

def sampling_and_topk(steps):
    torch.manual_seed(0)
    m = nn.Linear(6, 10); opt = torch.optim.Adam(m.parameters(), lr=0.01)
    out = []
    for i in range(steps):
        logits = m(torch.randn(4, 6))
        probs = logits.softmax(-1)
        a = torch.multinomial(probs, 2)
        g = F.gumbel_softmax(logits, tau=0.5, hard=True)
        v, idx = logits.topk(3, dim=-1)
        s, order = logits.sort(-1)
        loss = -(probs.gather(1, a).log().sum()) + (g * logits).sum() + v.mean() + s[:, 0].mean()
        train_step(opt, loss, out)
        out.append(a.tolist()); out.append(idx[0].tolist())
    return out, params(m)

def masks_and_unique(steps):
    torch.manual_seed(0)
    m = nn.Linear(4, 1); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    out = []
    for i in range(steps):
        x = torch.randn(16, 4)
        y = m(x).squeeze(1)
        l = F.mse_loss(y, torch.zeros(16), reduction="none")
        mask = l > l.median()
        loss = l.masked_select(mask).mean() + l[~mask].sum() * 0.1
        u = torch.unique((x[:, 0] * 2).round())
        train_step(opt, loss, out)
        out.append(u.numel())
        x2 = x.clone(); x2[x2 < 0] = 0.0; out.append(float(x2.sum()))
    return out, params(m)

def packed_lstm(steps):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, batch_first=True); head = nn.Linear(5, 1); opt = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=0.01)
    out = []
    lengths = torch.tensor([6, 4, 3])
    for i in range(steps):
        x = torch.randn(3, 6, 3)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=True)
        o, (h, c) = lstm(packed)
        o, lens = pad_packed_sequence(o, batch_first=True)
        loss = head(h[-1]).pow(2).mean() + o.sum() * 0.01
        train_step(opt, loss, out)
    return out, params(lstm, head)

def vmap_per_sample_grads(steps):
    from torch.func import functional_call, vmap, grad
    torch.manual_seed(0)
    m = nn.Linear(4, 1); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    out = []
    for i in range(steps):
        x, y = torch.randn(6, 4), torch.randn(6, 1)
        ps = {k: v.detach() for k, v in m.named_parameters()}
        def f(p, xi, yi):
            return (functional_call(m, p, (xi.unsqueeze(0),)) - yi).pow(2).mean()
        g = vmap(grad(f), in_dims=(None, 0, 0))(ps, x, y)
        norms = torch.stack([v.flatten(1).norm(dim=1) for v in g.values()]).sum(0)
        loss = (m(x) - y).pow(2).mean()
        train_step(opt, loss, out)
        out.append(norms.tolist())
    return out, params(m)

def inference_mode_eval(steps):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    out = []
    for i in range(steps):
        loss = F.cross_entropy(m(torch.randn(5, 4)), torch.randint(0, 2, (5,)))
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.inference_mode():
            pred = m(torch.randn(7, 4)).argmax(1)
            acc = (pred == 1).float().mean()
        out.append(loss.item()); out.append(acc.item())
    return out, params(m)

def activation_hooks_and_scripted(steps):
    @torch.jit.script
    def fused(x: torch.Tensor, k: float) -> torch.Tensor:
        return torch.tanh(x) * k + x.sigmoid()
    torch.manual_seed(0)
    m = nn.Linear(4, 6); h2 = nn.Linear(6, 1); opt = torch.optim.SGD([*m.parameters(), *h2.parameters()], lr=0.1)
    out = []
    for i in range(steps):
        a = m(torch.randn(5, 4))
        a.register_hook(lambda g: g * 0.5)
        loss = h2(fused(a, 0.3)).pow(2).mean()
        train_step(opt, loss, out)
    return out, params(m, h2)

class Tagged(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return super().__torch_function__(func, types, args, kwargs or {})

def tensor_subclass(steps):
    torch.manual_seed(0)
    m = nn.Linear(4, 1); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    out = []
    for i in range(steps):
        x = torch.randn(5, 4).as_subclass(Tagged)
        loss = m(x).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        out.append(float(loss)); out.append(type(loss).__name__)
    return out, params(m)

def queued_inplace_order(steps):
    torch.manual_seed(0)
    m = nn.Linear(3, 3); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    out = []
    for i in range(steps):
        x = torch.randn(4, 3)
        y = m(x.clone())
        z = x * 2
        x.add_(1)
        w = x.clone(); x.zero_()
        loss = (y * w).sum() + z.sum()
        train_step(opt, loss, out)
        out.append(x.sum().item())
    return out, params(m)

def lr_schedulers_and_state_dict(steps):
    import io
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 1))
    opt = torch.optim.RMSprop(m.parameters(), lr=0.01, momentum=0.5)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    out = []
    for i in range(steps):
        loss = m(torch.randn(6, 4)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        sched.step(loss)  # reads loss as a number
        out.append(loss.item()); out.append(opt.param_groups[0]["lr"])
        if i == 9:
            buf = io.BytesIO(); torch.save({"m": m.state_dict(), "o": opt.state_dict()}, buf); buf.seek(0)
            ck = torch.load(buf); m.load_state_dict(ck["m"]); opt.load_state_dict(ck["o"])
    return out, params(m)

def conv_pool_interp(steps):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.MaxPool2d(2), nn.GroupNorm(2, 4), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(4, 1, 1))
    opt = torch.optim.Adam(m.parameters(), lr=0.01, amsgrad=True)
    out = []
    for i in range(steps):
        x = torch.randn(2, 2, 8, 8)
        y = m(x)
        loss = F.binary_cross_entropy_with_logits(y, (x[:, :1] > 0).float())
        train_step(opt, loss, out)
    return out, params(m)

def int_and_bool_tensors(steps):
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4); opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    counts = torch.zeros(10, dtype=torch.long)
    out = []
    for i in range(steps):
        idx = torch.randint(0, 10, (8,))
        counts.index_add_(0, idx, torch.ones(8, dtype=torch.long))
        counts.scatter_add_(0, idx, torch.ones(8, dtype=torch.long))
        flags = idx % 2 == 0
        loss = (emb(idx) * flags.unsqueeze(1)).pow(2).sum()
        train_step(opt, loss, out)
        out.append(int(counts.max())); out.append(bool(flags.any()))
    return out, params(emb) + [counts.clone()]

def optimizer_in_backward(steps):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opts = {p: torch.optim.SGD([p], lr=0.01, momentum=0.9) for p in m.parameters()}
    def hook(p):
        opts[p].step(); opts[p].zero_grad()
    for p in m.parameters(): p.register_post_accumulate_grad_hook(hook)
    out = []
    for i in range(steps):
        loss = m(torch.randn(5, 8)).pow(2).mean()
        loss.backward()
        terra.iteration()
        out.append(loss.item())
    return out, params(m)

def swa_averaging(steps):
    from torch.optim.swa_utils import AveragedModel, SWALR
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    swa = AveragedModel(m); sched = SWALR(opt, swa_lr=0.01)
    out = []
    for i in range(steps):
        loss = m(torch.randn(6, 8)).pow(2).mean()
        train_step(opt, loss, out)
        if i >= 4:
            swa.update_parameters(m); sched.step()
    return out, params(m, swa) + [b.clone() for b in swa.buffers() if b.dtype.is_floating_point]

def spectral_and_orthogonal(steps):
    torch.manual_seed(0)
    a = nn.utils.parametrizations.spectral_norm(nn.Linear(6, 6))
    b = nn.utils.parametrizations.orthogonal(nn.Linear(6, 6))
    opt = torch.optim.SGD(list(a.parameters()) + list(b.parameters()), lr=0.05)
    out = []
    for i in range(steps):
        loss = b(torch.relu(a(torch.randn(5, 6)))).pow(2).mean()
        train_step(opt, loss, out)
    return out, params(a, b) + [bb.clone() for bb in a.buffers()]

def fused_and_foreach_optim(steps):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    b = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    o1 = torch.optim.Adam(a.parameters(), lr=0.01, fused=True)
    o2 = torch.optim.SGD(b.parameters(), lr=0.01, momentum=0.9, foreach=True)
    out = []
    for i in range(steps):
        x = torch.randn(8, 4)
        l1 = a(x).pow(2).mean(); l2 = b(x).pow(2).mean()
        o1.zero_grad(); o2.zero_grad(); (l1 + l2).backward(); o1.step(); o2.step()
        out.append(l1.item()); out.append(l2.item())
    return out, params(a, b)

def distributions_rsample(steps):
    torch.manual_seed(0)
    enc = nn.Linear(4, 4); dec = nn.Linear(2, 4); opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=0.01)
    out = []
    for i in range(steps):
        x = torch.randn(8, 4)
        mu, logv = enc(x).chunk(2, -1)
        q = torch.distributions.Normal(mu, (0.5 * logv).exp())
        z = q.rsample()
        kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0., 1.)).sum(-1).mean()
        loss = F.mse_loss(dec(z), x) + kl
        train_step(opt, loss, out)
    return out, params(enc, dec)

def full_backward_hooks(steps):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)); opt = torch.optim.SGD(m.parameters(), lr=0.05)
    seen = []
    m[0].register_full_backward_hook(lambda mod, gi, go: seen.append(float(go[0].abs().sum())))
    m[2].register_full_backward_pre_hook(lambda mod, go: (go[0] * 0.5,))
    out = []
    for i in range(steps):
        loss = m(torch.randn(6, 4)).pow(2).mean()
        train_step(opt, loss, out)
    return out + seen, params(m)

def inplace_saved_error(steps):
    torch.manual_seed(0)
    m = nn.Linear(4, 4); opt = torch.optim.SGD(m.parameters(), lr=0.01)
    out = []
    for i in range(steps):
        y = m(torch.randn(3, 4))
        z = y.sigmoid()
        if i == steps - 4:
            z.mul_(2)  # sigmoid saved its output: backward must raise
        loss = z.sum()
        try:
            opt.zero_grad(); loss.backward(); opt.step()
            out.append(loss.item())
        except RuntimeError as e:
            out.append("error: " + str(e)[:60])
    return out, params(m)

def jacobian_hessian(steps):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)); opt = torch.optim.SGD(m.parameters(), lr=0.05)
    out = []
    for i in range(steps):
        x = torch.randn(3)
        J = torch.autograd.functional.jacobian(lambda v: m(v), x)
        H = torch.autograd.functional.hessian(lambda v: m(v).sum(), x)
        loss = m(x).pow(2).sum() + J.pow(2).sum() * 0.1
        train_step(opt, loss, out)
        out.append(float(H.trace()))
    return out, params(m)

def grad_hook_numpy_logging(steps):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)); opt = torch.optim.SGD(m.parameters(), lr=0.05)
    norms = []
    m[0].weight.register_hook(lambda g: norms.append(float(np.linalg.norm(g.numpy()))))
    m[2].weight.register_hook(lambda g: g * 0.5)
    out = []
    for i in range(steps):
        loss = m(torch.randn(5, 8)).pow(2).mean()
        train_step(opt, loss, out)
    return out + norms, params(m)

def partial_backward_inputs(steps):
    torch.manual_seed(0)
    a, b = nn.Linear(4, 8), nn.Linear(8, 1); opt = torch.optim.Adam(list(a.parameters()) + list(b.parameters()), lr=0.01)
    out = []
    for i in range(steps):
        loss = b(torch.tanh(a(torch.randn(5, 4)))).pow(2).mean()
        opt.zero_grad()
        loss.backward(inputs=list(b.parameters()) if i % 2 else None)
        opt.step(); out.append(loss.item())
    return out, params(a, b)

def tensor_lr(steps):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    lr = torch.tensor(0.01)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    out = []
    for i in range(steps):
        loss = m(torch.randn(5, 4)).pow(2).mean()
        train_step(opt, loss, out)
        opt.param_groups[0]["lr"].mul_(0.9)
    return out, params(m)

def dtype_switch_midway(steps):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)); opt = torch.optim.SGD(m.parameters(), lr=0.05)
    out = []
    dt = torch.float32
    for i in range(steps):
        if i == steps // 2:
            m.double(); dt = torch.float64
            opt = torch.optim.SGD(m.parameters(), lr=0.05)
        loss = m(torch.randn(5, 4, dtype=dt)).pow(2).mean()
        train_step(opt, loss, out)
    return out, params(m)

def dataloader_shuffle_generator(steps):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    g = torch.Generator().manual_seed(3)
    dl = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, generator=g)
    m = nn.Linear(8, 1); opt = torch.optim.SGD(m.parameters(), lr=0.01)
    out = []
    n = 0
    while n < steps:
        for xb, yb in dl:
            loss = F.mse_loss(m(xb), yb)
            opt.zero_grad(); loss.backward(); opt.step()
            n += 1
            if n % 4 == 0: out.append(loss.item())
            if n >= steps: break
    return out, params(m)

def grad_of_grad_penalty_wgan(steps):
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(4, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    G = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 4))
    od = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.9)); og = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.9))
    out = []
    for i in range(steps):
        real = torch.randn(8, 4); fake = G(torch.randn(8, 2))
        eps = torch.rand(8, 1)
        mix = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
        g, = torch.autograd.grad(D(mix).sum(), mix, create_graph=True)
        gp = ((g.norm(2, dim=1) - 1) ** 2).mean()
        ld = D(fake.detach()).mean() - D(real).mean() + 10 * gp
        od.zero_grad(); ld.backward(); od.step()
        if i % 2 == 0:
            lg = -D(G(torch.randn(8, 2))).mean()
            og.zero_grad(); lg.backward(); og.step()
        out.append(ld.item())
    return out, params(D, G)

S = {f.__name__: f for f in (sparse_embedding, retain_and_grad, freeze_midway, numpy_writes_tensor, view_inplace_on_param, history_stack, add_param_group, complex_and_ints, mha_and_weightnorm, data_dependent_branch, generator_and_reseed, deepcopy_target, amp_scaler, checkpointing, formats_and_lists, buffers_and_counters, custom_function_and_hooks, sampling_and_topk, masks_and_unique, packed_lstm, vmap_per_sample_grads, inference_mode_eval, activation_hooks_and_scripted, tensor_subclass, queued_inplace_order, lr_schedulers_and_state_dict, conv_pool_interp, int_and_bool_tensors,
    optimizer_in_backward, swa_averaging, spectral_and_orthogonal, fused_and_foreach_optim, distributions_rsample, full_backward_hooks, inplace_saved_error, jacobian_hessian, grad_hook_numpy_logging, partial_backward_inputs, tensor_lr, dtype_switch_midway, dataloader_shuffle_generator, grad_of_grad_penalty_wgan)}
name = sys.argv[1]
steps = 16
eager = S[name](steps)
terra.enable("coexec", stable_after=2)
coexec = S[name](steps)
stats = terra.stats().get("coexec", {})
terra.disable()
same = eager[0] == coexec[0] and len(eager[1]) == len(coexec[1]) and all(
    torch.equal(a, b) for a, b in zip(eager[1], coexec[1]))
print("RESULT " + json.dumps({"same": same, "iterations": stats.get("iterations", 0)}))
'''

NAMES = ['sparse_embedding', 'retain_and_grad', 'freeze_midway', 'numpy_writes_tensor', 'view_inplace_on_param', 'history_stack', 'add_param_group', 'complex_and_ints', 'mha_and_weightnorm', 'data_dependent_branch', 'generator_and_reseed', 'deepcopy_target', 'amp_scaler', 'checkpointing', 'formats_and_lists', 'buffers_and_counters', 'custom_function_and_hooks', 'sampling_and_topk', 'masks_and_unique', 'packed_lstm', 'vmap_per_sample_grads', 'inference_mode_eval', 'activation_hooks_and_scripted', 'tensor_subclass', 'queued_inplace_order', 'lr_schedulers_and_state_dict', 'conv_pool_interp', 'int_and_bool_tensors',
         'optimizer_in_backward', 'swa_averaging', 'spectral_and_orthogonal', 'fused_and_foreach_optim', 'distributions_rsample', 'full_backward_hooks', 'inplace_saved_error', 'jacobian_hessian', 'grad_hook_numpy_logging', 'partial_backward_inputs', 'tensor_lr', 'dtype_switch_midway', 'dataloader_shuffle_generator', 'grad_of_grad_penalty_wgan']
EAGER_ONLY = {"sparse_embedding"}


@pytest.mark.parametrize("name", NAMES)
def test_bit_identical_under_coexec(name, tmp_path):
    path = tmp_path / "programs.py"
    path.write_text(PROGRAMS)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(path), name], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:]
    result = json.loads(line[0][len("RESULT "):])
    assert result["same"], result
    if name not in EAGER_ONLY:
        assert result["iterations"] > 0, result
