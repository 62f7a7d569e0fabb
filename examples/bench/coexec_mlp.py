"""A Python loop of small matmuls with autograd and SGD: the co-execution microbenchmark.

    terrarun -np 1 --mode eager  examples/bench/coexec_mlp.py --width 256
    terrarun -np 1 --mode coexec examples/bench/coexec_mlp.py --width 256

Each iteration applies `h = tanh(h @ w) + h` --depth times to a 4 x width
batch, backpropagates and steps SGD, then reads the loss. It prints the median
over the last half of the iterations of the time Python spent issuing the
iteration ("program") and of the time it then waited for the value ("wait").
Under eager the wait is zero; under co-execution "program" is the program
thread's own cost and "wait" what the executor still had to do. At one
intra-op thread (the default here), width 8 measures per-op overhead (the
kernels are negligible) and width 256 a kernel-bound loop.
"""
import argparse
import statistics
import time

import torch

import terra


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=300)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w = torch.randn(args.width, args.width, requires_grad=True)
    x = torch.randn(4, args.width)
    opt = torch.optim.SGD([w], lr=1e-3)
    issue, wait = [], []
    for it in range(args.iters):
        t0 = time.perf_counter()
        h = x
        for _ in range(args.depth):
            h = torch.tanh(h @ w) + h
        loss = h.sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        t1 = time.perf_counter()
        loss.item()
        t2 = time.perf_counter()
        if it >= args.iters // 2:
            issue.append(t1 - t0)
            wait.append(t2 - t1)
    coexec = (terra.stats().get("coexec") or {}).get("iterations", 0)
    print(f"width {args.width}: program {statistics.median(issue) * 1e3:.2f} ms, "
          f"then wait {statistics.median(wait) * 1e3:.2f} ms per iteration "
          f"({coexec} iterations co-executed)")


if __name__ == "__main__":
    main()
