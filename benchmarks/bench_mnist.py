"""MNIST training throughput: the K models of a unit stepped together, per optimizer, and against
training them one at a time.

    python benchmarks/bench_mnist.py [--models 60] [--steps 40] [--rounds 3] [--one-at-a-time 10]

K = 20 lrs x 3 replicates (one unit of the paper's grid) on mnist-5k, fp32, all CPU threads.
Times count training steps only: an n-step and a 2n-step run are timed and differenced, so set-up
and the final test evaluation drop out; optimizers and batch sizes are interleaved and each figure
is the fastest of ``--rounds``, so a noisy spell on a shared machine hits them alike.

1. ms per training step of all K models (forward, backward, update) at batch sizes 8 and 512 for
   AdamW (torch's fused kernel, one instance per lr), and Signum and FOCUS fused (one instance over
   all K models with per-row lrs, focuslab.optim) beside the way they ran before (one instance per
   lr, "per lr"): the issue's target is signum and focus at most AdamW's at batch 8.
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
    t = []
    for n in (steps, 2 * steps):
        t0 = time.perf_counter()
        fn(n)
        t.append(time.perf_counter() - t0)
    return t[1] - t[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=60, help="lrs x replicates (3 replicates)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per configuration (fastest kept)")
    ap.add_argument("--one-at-a-time", type=int, default=10, help="models timed in the slow path (0: skip table 2)")
    args = ap.parse_args()
    from focuslab.mnist.data import load_dataset
    from focuslab.mnist.steppers import Steppers
    from focuslab.mnist.train import to_tensors, train_batched, train_one

    data = to_tensors(load_dataset("mnist-5k"))
    R = 3
    lrs = np.logspace(-4, 0, args.models // R)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(lrs) * R} models, {args.steps} steps; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    fused = Steppers._fused
    configs = [("adamw", "adamw", True), ("signum", "signum", True), ("signum per lr", "signum", False),
               ("focus", "focus", True), ("focus per lr", "focus", False)]
    best = {(label, bs): math.inf for label, _, _ in configs for bs in (8, 512)}
    modes = {}
    for label, opt, fuse in configs:  # warm-up every path
        Steppers._fused = fused if fuse else (lambda self, wd, device: False)
        modes[label] = train_batched(data, opt, 8, lrs[:2], 1, 2)["stepping"].split(":")[0]
    load = [os.getloadavg()[0]]
    try:
        for _ in range(args.rounds):
            for bs in (8, 512):
                for label, opt, fuse in configs:
                    Steppers._fused = fused if fuse else (lambda self, wd, device: False)
                    s = timed(lambda n: train_batched(data, opt, bs, lrs, R, n), args.steps)
                    best[label, bs] = min(best[label, bs], s / args.steps * 1e3)
            load.append(os.getloadavg()[0])
    finally:
        Steppers._fused = fused
    print(f"\nms per training step of all {len(lrs) * R} models, fastest of {args.rounds} (load average "
          f"{min(load):.1f}-{max(load):.1f})")
    print(f"{'optimizer':<16}{'stepping':>12}{'batch 8':>10}{'vs adamw':>10}{'batch 512':>11}{'vs adamw':>10}")
    for label, _, _ in configs:
        b8, b512 = best[label, 8], best[label, 512]
        print(f"{label:<16}{modes[label]:>12}{b8:>10.1f}{b8 / best['adamw', 8]:>9.2f}x{b512:>11.1f}"
              f"{b512 / best['adamw', 512]:>9.2f}x")
    if not args.one_at_a_time:
        return
    print(f"\n{'optimizer':<10}{'batch':>6}{'batched model-steps/s':>24}{'one-at-a-time':>16}{'speed-up':>10}")
    for opt in ("adamw", "signum", "focus"):
        for bs in (8, 512):
            train_one(data, opt, bs, 1e-3, 0, 2)
            batched = len(lrs) * R * args.steps / timed(lambda n: train_batched(data, opt, bs, lrs, R, n), args.steps)
            single = args.one_at_a_time * args.steps / timed(
                lambda n: [train_one(data, opt, bs, float(lrs[k % len(lrs)]), k % R, n)
                           for k in range(args.one_at_a_time)], args.steps)
            print(f"{opt:<10}{bs:>6}{batched:>24.0f}{single:>16.0f}{batched / single:>9.1f}x")


if __name__ == "__main__":
    main()
