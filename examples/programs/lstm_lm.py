#!/usr/bin/env python3
"""An LSTM language model whose forward loops over time steps in Python.

Two stacked LSTMCells are stepped one token at a time; the hidden state is
carried from batch to batch (truncated back-propagation through time) as a
Python list that the training loop detaches and stores again.

Python features: a Python for-loop over time steps inside forward, a Python
list of (h, c) tuples mutated across iterations, math.exp(loss.item()) for
perplexity, gradient clipping with a Python-side check of the norm.
"""
import math

import numpy as np
import torch
import torch.nn as nn

import common


class LSTMLM(nn.Module):
    def __init__(self, vocab, emb, hidden, layers):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.cells = nn.ModuleList([nn.LSTMCell(emb if i == 0 else hidden, hidden) for i in range(layers)])
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens, state):
        x = self.drop(self.embed(tokens))            # (T, B, E)
        outputs = []
        for t in range(x.size(0)):
            inp = x[t]
            new_state = []
            for cell, (h, c) in zip(self.cells, state):
                h, c = cell(inp, (h, c))
                new_state.append((h, c))
                inp = h
            state = new_state
            outputs.append(inp)
        y = self.drop(torch.stack(outputs))
        return self.out(y), state


def markov_corpus(vocab, length, rng):
    """A sparse random Markov chain, so the model has something to learn."""
    nxt = rng.integers(0, vocab, size=(vocab, 4))
    tokens = np.empty(length, np.int64)
    tokens[0] = 0
    choices = rng.integers(0, 4, size=length)
    for i in range(1, length):
        tokens[i] = nxt[tokens[i - 1], choices[i]]
    return torch.from_numpy(tokens)


def main():
    run = common.start(__doc__)
    tiny = run.args.size == "tiny"
    vocab, emb, hidden, layers, bptt, batch = (50, 16, 32, 2, 5, 4) if tiny else (1000, 128, 256, 2, 35, 16)
    dev = run.device
    corpus = markov_corpus(vocab, 20000, np.random.default_rng(run.args.seed))
    data = corpus[: (len(corpus) // batch) * batch].view(batch, -1).t().contiguous().to(dev)  # (N, B)

    def zero_state():
        return [(torch.zeros(batch, hidden, device=dev), torch.zeros(batch, hidden, device=dev)) for _ in range(layers)]

    model = run.prepare(LSTMLM(vocab, emb, hidden, layers).to(dev), [data[:bptt], zero_state()])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    criterion = nn.CrossEntropyLoss()
    state, pos = zero_state(), 0

    for it in run.steps():
        if pos + bptt + 1 >= data.size(0):
            state, pos = zero_state(), 0
        inputs, targets = data[pos:pos + bptt], data[pos + 1:pos + 1 + bptt]
        pos += bptt
        state = [(h.detach(), c.detach()) for h, c in state]
        opt.zero_grad()
        logits, state = model(inputs, state)
        loss = criterion(logits.view(-1, vocab), targets.reshape(-1))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25).item()
        if math.isfinite(norm):
            opt.step()
        run.log(loss, ppl=math.exp(min(loss.item(), 20.0)))

    run.finish(model=model)


if __name__ == "__main__":
    main()
