"""MNIST training throughput: the K models of a unit stepped together, per optimizer, and against
training them one at a time.

    python benchmarks/bench_mnist.py [--models 60] [--steps 40] [--rounds 3] [--batches 8,512] [--one-at-a-time 10]

K = 20 lrs x 3 replicates (one unit of the paper's grid) on mnist-5k, fp32, all CPU threads (or
``--threads``).  Times count training steps only: the fastest n-step and the fastest 2n-step runs
of ``--rounds`` are differenced, so set-up and the final test evaluation drop out; optimizers and
batch sizes are interleaved, so a noisy spell on a shared machine hits them alike.

1. ms per training step of all K models (forward, backward, update) at batch sizes 8 and 512 for
   AdamW (torch's fused kernel, one instance per lr), and Signum and FOCUS fused (one instance over
   all K models with per-row lrs, each tensor updated in one pass: focuslab.optim) beside the way
   they ran before (one instance per lr, the per-op update: "before"): the issue's target is signum
   and focus at most AdamW's at batch 8.
2. model-steps/s of the batched trainer against the one-at-a-time trainer (nn.Module + the same
   optimizer class), on the same models and minibatches.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch


def timed(fn, steps: int) -> float:
    """Seconds of ``steps`` training steps: (2n-step run) - (n-step run)."""
    t = run_pair(fn, steps)
    return t[1] - t[0]


def run_pair(fn, steps: int) -> tuple[float, float]:
    """Seconds of an n-step run and of a 2n-step run."""
    t = []
    for n in (steps, 2 * steps):
        t0 = time.perf_counter()
        fn(n)
        t.append(time.perf_counter() - t0)
    return t[0], t[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=60, help="lrs x replicates (3 replicates)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per configuration (fastest kept)")
    ap.add_argument("--batches", default="8,512", help="batch sizes, comma-separated")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, all cores)")
    ap.add_argument("--one-at-a-time", type=int, default=10, help="models timed in the slow path (0: skip table 2)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    from focuslab.mnist.data import load_dataset
    from focuslab.mnist.steppers import Steppers
    from focuslab.optim import _fused
    from focuslab.mnist.train import to_tensors, train_batched, train_one

    data = to_tensors(load_dataset("mnist-5k"))
    R = 3
    lrs = np.logspace(-4, 0, args.models // R)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(lrs) * R} models, {args.steps} steps; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    fused, usable = Steppers._fused, _fused.usable
    configs = [("adamw", "adamw", True), ("signum", "signum", True), ("signum, before", "signum", False),
               ("focus", "focus", True), ("focus, before", "focus", False)]

    def setup(fuse: bool):  # before: one instance per lr, and the per-op update
        Steppers._fused = fused if fuse else (lambda self, wd, device: False)
        _fused.usable = usable if fuse else (lambda tensors: False)

    best = {(label, bs, k): math.inf for label, _, _ in configs for bs in batches for k in (1, 2)}
    modes = {}
    for label, opt, fuse in configs:  # warm-up every path
        setup(fuse)
        modes[label] = train_batched(data, opt, 8, lrs[:2], 1, 2)["stepping"].split(":")[0]
    load = [os.getloadavg()[0]]
    try:
        for _ in range(args.rounds):
            for bs in batches:
                for label, opt, fuse in configs:
                    setup(fuse)
                    for k, s in zip((1, 2), run_pair(lambda n: train_batched(data, opt, bs, lrs, R, n), args.steps)):
                        best[label, bs, k] = min(best[label, bs, k], s)
            load.append(os.getloadavg()[0])
    finally:
        setup(True)
    ms = {(label, bs): (best[label, bs, 2] - best[label, bs, 1]) / args.steps * 1e3 for label, _, _ in configs
          for bs in batches}  # the fastest 2n-step run minus the fastest n-step run
    print(f"\nms per training step of all {len(lrs) * R} models, fastest of {args.rounds} (load average "
          f"{min(load):.1f}-{max(load):.1f})")
    print(f"{'optimizer':<16}{'stepping':>12}" + "".join(f"{f'batch {bs}':>11}{'vs adamw':>10}" for bs in batches))
    for label, _, _ in configs:
        print(f"{label:<16}{modes[label]:>12}" + "".join(
            f"{ms[label, bs]:>11.1f}{ms[label, bs] / ms['adamw', bs]:>9.2f}x" for bs in batches))
    if not args.one_at_a_time:
        return
    print(f"\n{'optimizer':<10}{'batch':>6}{'batched model-steps/s':>24}{'one-at-a-time':>16}{'speed-up':>10}")
    for opt in ("adamw", "signum", "focus"):
        for bs in batches:
            train_one(data, opt, bs, 1e-3, 0, 2)
            batched = len(lrs) * R * args.steps / timed(lambda n: train_batched(data, opt, bs, lrs, R, n), args.steps)
            single = args.one_at_a_time * args.steps / timed(
                lambda n: [train_one(data, opt, bs, float(lrs[k % len(lrs)]), k % R, n)
                           for k in range(args.one_at_a_time)], args.steps)
            print(f"{opt:<10}{bs:>6}{batched:>24.0f}{single:>16.0f}{batched / single:>9.1f}x")


if __name__ == "__main__":
    main()
