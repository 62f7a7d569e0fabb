"""Whether ATen's CPU results depend on the intra-op thread count: the reason the executor keeps eager's.

    python3 examples/bench/thread_invariance.py --cases 1500 --threads 2

Co-execution must give eager's results bit for bit, so its executor runs the
kernels with eager's intra-op thread count, and on a machine whose cores
that count fills, the executor's pool and the program's thread overfill
them (docs/coexecution.md, "The cores"). This checks the premise: it runs
random matrix products (the shapes the suite's layers use, both operand
layouts) and a few reductions at one thread and at --threads, and counts
the results that differ in any bit. Elementwise kernels split the output
between threads and cannot differ; MKL's gemm and ATen's whole-tensor
reductions may, and which shapes do depends on the library and the CPU.
Prints the counts and the first differing shapes; exits 0 either way (a
measurement, not a test).
"""
import argparse
import random

import torch

SIZES = [1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 20, 25, 32, 33, 50, 64, 100, 128, 140, 256, 384, 512, 560, 1000, 1024]


def run_at(threads, fn):
    torch.set_num_threads(threads)
    return fn()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1500, help="random matrix products")
    parser.add_argument("--threads", type=int, default=max(2, torch.get_num_threads()),
                        help="the thread count compared with one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)

    differ = []
    for _ in range(args.cases):
        m, n, k = (rng.choice(SIZES) for _ in range(3))
        ta, tb = rng.random() < 0.5, rng.random() < 0.5
        a = torch.randn(k, m).t() if ta else torch.randn(m, k)
        b = torch.randn(n, k).t() if tb else torch.randn(k, n)
        c = torch.randn(m, n)
        many = run_at(args.threads, lambda: (torch.addmm(c, a, b), torch.mm(a, b)))
        one = run_at(1, lambda: (torch.addmm(c, a, b), torch.mm(a, b)))
        if not all(torch.equal(x, y) for x, y in zip(many, one)):
            differ.append((m, n, k, "a.T" if ta else "a", "b.T" if tb else "b"))

    reductions = []
    for numel in (1000, 40_000, 1_000_000):
        x = torch.randn(numel)
        for name, fn in (("sum", lambda: x.sum()), ("norm", lambda: x.norm()), ("mean", lambda: x.mean())):
            if not torch.equal(run_at(args.threads, fn), run_at(1, fn)):
                reductions.append(f"{name}({numel})")

    print(f"torch {torch.__version__}, {torch.backends.mkl.is_available() and 'MKL' or 'no MKL'}, "
          f"{args.threads} threads against 1")
    print(f"matrix products: {len(differ)} of {args.cases} differ in some bit")
    for case in differ[:10]:
        print("  m=%d n=%d k=%d %s @ %s" % case)
    print(f"whole-tensor reductions that differ: {', '.join(reductions) or 'none'}")


if __name__ == "__main__":
    main()
