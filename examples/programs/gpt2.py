#!/usr/bin/env python3
"""A small GPT-2-style decoder (pre-norm blocks, causal self-attention) trained with AdamW.

Python features: a learning-rate warm-up and cosine decay computed in Python
and written into the optimizer's param_groups each step, a gradient-norm
check with .item() that skips the step on overflow, printing.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common


class CausalSelfAttention(nn.Module):
    def __init__(self, d, heads, block):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(0.1)
        self.register_buffer("mask", torch.tril(torch.ones(block, block)).view(1, 1, block, block))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
        att = self.drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, d, heads, block):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads, block)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(0.1))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab, block, layers, heads, d):
        super().__init__()
        self.block = block
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.drop = nn.Dropout(0.1)
        self.blocks = nn.ModuleList([Block(d, heads, block) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets):
        B, T = idx.size()
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def lr_at(step, base, warmup, total):
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.1 + 0.45 * base * (1 + math.cos(math.pi * progress))


def main():
    run = common.start(__doc__)
    tiny = run.args.size == "tiny"
    vocab, block, layers, heads, d, batch = (64, 16, 1, 2, 16, 2) if tiny else (512, 64, 4, 4, 128, 8)
    dev = run.device
    rng = np.random.default_rng(run.args.seed)
    # Synthetic text: repeated random "words" so that context helps.
    words = [rng.integers(0, vocab, size=rng.integers(2, 8)) for _ in range(200)]
    corpus = torch.from_numpy(np.concatenate([words[i] for i in rng.integers(0, 200, size=20000)]))

    def get_batch():
        ix = torch.randint(len(corpus) - block - 1, (batch,))
        x = torch.stack([corpus[i:i + block] for i in ix.tolist()])
        y = torch.stack([corpus[i + 1:i + 1 + block] for i in ix.tolist()])
        return x.to(dev), y.to(dev)

    model = run.prepare(GPT(vocab, block, layers, heads, d).to(dev), get_batch())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    total = run.args.warmup + run.args.iters
    skipped = 0

    for it in run.steps():
        for group in opt.param_groups:
            group["lr"] = lr_at(it, 1e-3, 10, total)
        x, y = get_batch()
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if torch.isfinite(norm).item():
            opt.step()
        else:
            skipped += 1
        run.log(loss, lr=opt.param_groups[0]["lr"])

    run.finish(model=model)


if __name__ == "__main__":
    main()
