#!/usr/bin/env python3
"""A Music-Transformer-style decoder with relative global attention (the "skew" trick).

Relative position logits Q·Erᵀ are computed against a learned table of
relative embeddings and skewed (pad, reshape, slice) into absolute
positions, as in Huang et al. 2018. Training data are synthetic MIDI-like
event sequences (note-on, note-off, time-shift, velocity tokens) from a
seeded numpy generator.

Python features: numpy-built event sequences with random crops per sample,
token accuracy from .item(), a Python-side loss-scale rule.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

VOCAB = 128 + 128 + 100 + 32  # note-on, note-off, time-shift, velocity


class RelativeGlobalAttention(nn.Module):
    def __init__(self, d, heads, max_len):
        super().__init__()
        self.heads, self.dh, self.max_len = heads, d // heads, max_len
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.Er = nn.Parameter(torch.randn(max_len, d // heads) * 0.02)

    @staticmethod
    def skew(qe):
        B, H, L, _ = qe.shape
        padded = F.pad(qe, (1, 0))                  # (B, H, L, L+1)
        return padded.reshape(B, H, L + 1, L)[:, :, 1:, :]

    def forward(self, x):
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        er = self.Er[self.max_len - L:, :]           # relative distances L-1 .. 0
        srel = self.skew(q @ er.transpose(0, 1))
        logits = (q @ k.transpose(-2, -1) + srel) / math.sqrt(self.dh)
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).triu(1)
        attn = logits.masked_fill(causal, float("-inf")).softmax(-1)
        return self.out((attn @ v).transpose(1, 2).reshape(B, L, C))


class DecoderLayer(nn.Module):
    def __init__(self, d, heads, max_len):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = RelativeGlobalAttention(d, heads, max_len)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.ffn(self.ln2(x)))


class MusicTransformer(nn.Module):
    def __init__(self, d, heads, layers, max_len):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.layers = nn.ModuleList([DecoderLayer(d, heads, max_len) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, VOCAB)
        self.scale = math.sqrt(d)

    def forward(self, tokens):
        x = self.embed(tokens) * self.scale
        for layer in self.layers:
            x = layer(x)
        return self.fc(self.ln(x))


def performance(rng, n_events):
    """A synthetic piano performance: arpeggios over random chords as event tokens."""
    events = []
    while len(events) < n_events:
        root = int(rng.integers(40, 70))
        chord = [root, root + 4, root + 7, root + 12]
        events.append(356 + int(rng.integers(0, 32)))            # velocity
        for pitch in chord:
            events += [pitch, 256 + int(rng.integers(5, 30)), 128 + pitch]  # on, shift, off
    return np.array(events[:n_events], np.int64)


def main():
    run = common.start(__doc__)
    tiny = run.args.size == "tiny"
    d, heads, layers, seq, batch = (16, 2, 1, 16, 2) if tiny else (128, 4, 4, 128, 8)
    dev = run.device
    rng = np.random.default_rng(run.args.seed)
    song = performance(rng, 50000)

    def get_batch():
        starts = rng.integers(0, len(song) - seq - 1, size=batch)
        chunk = np.stack([song[s:s + seq + 1] for s in starts])
        t = torch.from_numpy(chunk).to(dev)
        return t[:, :-1], t[:, 1:]

    model = run.prepare(MusicTransformer(d, heads, layers, seq).to(dev), [get_batch()[0]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    smoothing = 0.1

    for it in run.steps():
        x, y = get_batch()
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), label_smoothing=smoothing)
        loss.backward()
        opt.step()
        acc = (logits.argmax(-1) == y).float().mean().item()
        if acc > 0.5 and smoothing > 0.0:  # the model has the rhythm: stop smoothing
            smoothing = 0.0
        run.log(loss, acc=acc)

    run.finish(model=model)


if __name__ == "__main__":
    main()
