"""MNIST training throughput: K models trained as one batched model vs one at a time.

    python benchmarks/bench_mnist.py [--models 60] [--steps 40]

K = 20 lrs x 3 replicates (one unit of the paper's grid) on mnist-5k, fp32, all CPU threads.
"model-steps/s" counts one optimizer step of one model (forward, backward, update); set-up and the
final test evaluation are excluded by timing an n-step and a 2n-step run and taking the difference.
Both trainers run the same models on the same minibatches.  Measured side by side at batch sizes 8 and 512, for AdamW and FOCUS.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=60, help="lrs x replicates (3 replicates)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--one-at-a-time", type=int, default=10, help="models timed in the slow path")
    args = ap.parse_args()
    from focuslab.mnist.data import load_dataset
    from focuslab.mnist.train import to_tensors, train_batched, train_one

    data = to_tensors(load_dataset("mnist-5k"))
    R = 3
    lrs = np.logspace(-4, 0, args.models // R)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(lrs) * R} models, "
          f"{args.steps} steps")
    print(f"{'optimizer':<10}{'batch':>6}{'batched model-steps/s':>24}{'one-at-a-time':>16}{'speed-up':>10}")
    for opt in ("adamw", "focus"):
        for bs in (8, 512):
            train_batched(data, opt, bs, lrs[:2], 1, 2)  # warm-up both paths
            train_one(data, opt, bs, 1e-3, 0, 2)

            def timed(fn):  # training steps only: (2n-step run) - (n-step run)
                t = []
                for n in (args.steps, 2 * args.steps):
                    t0 = time.perf_counter()
                    fn(n)
                    t.append(time.perf_counter() - t0)
                return t[1] - t[0]

            batched = len(lrs) * R * args.steps / timed(lambda n: train_batched(data, opt, bs, lrs, R, n))
            single = args.one_at_a_time * args.steps / timed(
                lambda n: [train_one(data, opt, bs, float(lrs[k % len(lrs)]), k % R, n)
                           for k in range(args.one_at_a_time)])
            print(f"{opt:<10}{bs:>6}{batched:>24.0f}{single:>16.0f}{batched / single:>9.1f}x")


if __name__ == "__main__":
    main()
