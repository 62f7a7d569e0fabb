#!/usr/bin/env python3
"""A BERT-style encoder with a question-answering (span start/end) head.

Each batch holds question+context pairs of different lengths, padded in
Python to the longest one, so the sequence length changes between batches.
The answer span is a marker pattern planted in the context.

Python features: variable-length Python lists padded per batch (shapes change
between iterations), exact-match scoring from .tolist() in Python, an
attention mask built from Python lengths.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

PAD, CLS, SEP, MARK = 0, 1, 2, 3


class SelfAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(0.1)

    def forward(self, x, mask_bias):
        B, T, C = x.shape
        h = self.heads

        def split(t):
            return t.view(B, T, h, C // h).permute(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(C // h) + mask_bias
        ctx = self.drop(scores.softmax(-1)) @ v
        return self.out(ctx.permute(0, 2, 1, 3).reshape(B, T, C))


class Layer(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.attn = SelfAttention(d, heads)
        self.ln1 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.ln2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(0.1)

    def forward(self, x, mask_bias):
        x = self.ln1(x + self.drop(self.attn(x, mask_bias)))
        return self.ln2(x + self.drop(self.ffn(x)))


class BertForQA(nn.Module):
    def __init__(self, vocab, d, layers, heads, max_len):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.seg = nn.Embedding(2, d)
        self.ln = nn.LayerNorm(d)
        self.layers = nn.ModuleList([Layer(d, heads) for _ in range(layers)])
        self.qa = nn.Linear(d, 2)

    def forward(self, ids, segments, attention_mask):
        T = ids.size(1)
        pos = torch.arange(T, device=ids.device).unsqueeze(0)
        x = self.ln(self.tok(ids) + self.pos(pos) + self.seg(segments))
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        start, end = self.qa(x).split(1, dim=-1)
        return start.squeeze(-1), end.squeeze(-1)


def make_example(vocab, max_len, rng):
    q_len = int(rng.integers(4, 12))
    c_len = int(rng.integers(max_len // 3, max_len - q_len - 3))
    question = rng.integers(4, vocab, size=q_len).tolist()
    context = rng.integers(4, vocab, size=c_len).tolist()
    a_len = int(rng.integers(1, 5))
    a_start = int(rng.integers(1, c_len - a_len - 1))
    context[a_start - 1] = MARK           # the answer follows a marker token
    context[a_start:a_start + a_len] = question[:a_len]  # and repeats the question's start
    ids = [CLS] + question + [SEP] + context + [SEP]
    segments = [0] * (q_len + 2) + [1] * (c_len + 1)
    offset = q_len + 2
    return ids, segments, offset + a_start, offset + a_start + a_len - 1


def collate(examples, dev):
    longest = max(len(e[0]) for e in examples)
    ids = [e[0] + [PAD] * (longest - len(e[0])) for e in examples]
    seg = [e[1] + [0] * (longest - len(e[1])) for e in examples]
    mask = [[1] * len(e[0]) + [0] * (longest - len(e[0])) for e in examples]
    t = lambda rows: torch.tensor(rows, dtype=torch.long, device=dev)  # noqa: E731
    return t(ids), t(seg), t(mask), t([e[2] for e in examples]), t([e[3] for e in examples])


def main():
    run = common.start(__doc__)
    tiny = run.args.size == "tiny"
    vocab, d, layers, heads, max_len, batch = (64, 16, 1, 2, 32, 2) if tiny else (1000, 128, 4, 4, 128, 8)
    dev = run.device
    rng = np.random.default_rng(run.args.seed)
    ids, seg, mask, _, _ = collate([make_example(vocab, max_len, rng) for _ in range(batch)], dev)
    model = run.prepare(BertForQA(vocab, d, layers, heads, max_len).to(dev), [ids, seg, mask])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    exact, seen = 0, 0

    for it in run.steps():
        ids, seg, mask, starts, ends = collate([make_example(vocab, max_len, rng) for _ in range(batch)], dev)
        opt.zero_grad()
        start_logits, end_logits = model(ids, seg, mask)
        start_logits = start_logits.masked_fill(mask == 0, -10000.0)
        end_logits = end_logits.masked_fill(mask == 0, -10000.0)
        loss = (F.cross_entropy(start_logits, starts) + F.cross_entropy(end_logits, ends)) / 2
        loss.backward()
        opt.step()
        pred = zip(start_logits.argmax(-1).tolist(), end_logits.argmax(-1).tolist(), starts.tolist(), ends.tolist())
        exact += sum(1 for ps, pe, s, e in pred if ps == s and pe == e)
        seen += batch
        run.log(loss, len=ids.size(1), em=exact / seen)

    run.finish(model=model)


if __name__ == "__main__":
    main()
