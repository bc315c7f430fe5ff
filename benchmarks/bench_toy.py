"""Speed of the toy simulator: ns per optimizer step, side by side with a plain-Python stepper.

    python benchmarks/bench_toy.py            # kernel vs reference, one core, every optimizer
    python benchmarks/bench_toy.py --fig2a    # also the full-resolution fig2a preset, all cores

One "step" is one optimizer update of one 2-D trajectory, including its two gradient-noise normals
and the loss/metric bookkeeping.  The kernel runs 20,000 lanes (20 cells x 20 lrs x 50 replicates)
for 1000 steps in one process; the reference is focuslab.toy.reference.trajectory (pure Python
floats, one trajectory at a time, like the paper's scripts) timed on the same update rule.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def bench_kernel(name, repeats=5):
    from focuslab.toy.kernel import run
    from focuslab.toy.rng import trajectory_keys
    from focuslab.toy.updates import RULES

    rule = RULES[name]
    phi = math.pi / 6
    sharp = np.logspace(-1, 3, 20)
    cells = np.column_stack([sharp, np.linspace(0, 3, 20), np.full(20, 0.1), np.full(20, math.cos(phi)),
                             np.full(20, math.sin(phi)), np.full(20, 0.1)])
    lrs = np.logspace(-3, 0, 20)
    keys = trajectory_keys(0, cells[:, :5], np.arange(50))
    hp = rule.vector({})
    run(rule.code, hp, cells[:1], lrs[:1], keys[:1, :1], 2)  # load/compile outside the timing
    steps = 1000
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(rule.code, hp, cells, lrs, keys, steps)
        times.append(time.perf_counter() - t0)
    return min(times) / (cells.shape[0] * len(lrs) * keys.shape[1] * steps) * 1e9


def bench_reference(name, steps=2000):
    from focuslab.toy.reference import trajectory
    from focuslab.toy.rng import normal_pairs
    from focuslab.toy.updates import RULES

    noise = normal_pairs(np.uint64(1), 0, steps + 1).tolist()
    hp = dict(RULES[name].defaults)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        trajectory(name, hp, a=10.0, noise_std=1.0, weight_decay=0.1, theta=math.pi / 6, c=0.1,
                   lr=0.01, noise=noise, steps=steps)
        times.append(time.perf_counter() - t0)
    return min(times) / steps * 1e9


def bench_numpy_style(steps=2000):
    """Adam stepped the way the paper's scripts do it: NumPy 2-vectors, a matrix product and a
    np.random.normal call per step (their ~15 us/step figure comes from code of this shape)."""
    rng = np.random.default_rng(0)
    phi = math.pi / 6
    R = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
    a, c, lr, wd, b1, b2, eps, sigma = 10.0, 0.1, 0.01, 0.1, 0.9, 0.999, 1e-8, 1.0
    p = rng.normal(size=2) * 1e-4
    m = np.zeros(2)
    v = np.zeros(2)
    best = math.inf
    t0 = time.perf_counter()
    for t in range(1, steps + 1):
        u, w = p @ R
        g = (np.array([a * u * w ** 2 - c, a * u ** 2 * w]) @ R.T) * rng.normal(1.0, sigma, 2)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        p = p - lr * ((m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) + wd * p)
        u, w = p @ R
        best = min(best, 0.5 * a * u ** 2 * w ** 2 - c * u)
    return (time.perf_counter() - t0) / steps * 1e9


def bench_fig2a(jobs):
    from focuslab.config import build_scan_config, load_toml
    from focuslab.scan import run_scan

    cfg = build_scan_config(load_toml("fig2a", "scan"))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_scan(cfg, tmp, jobs=jobs, progress=sys.stderr.isatty())
        wall = time.perf_counter() - t0
    return cfg.total_steps(), wall, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fig2a", action="store_true", help="also time the full fig2a preset")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    args = ap.parse_args()
    from focuslab.toy.updates import RULES

    print(f"{'optimizer':<10}{'kernel ns/step':>16}{'reference ns/step':>20}{'speed-up':>12}")
    rows = []
    for name in RULES:
        k = bench_kernel(name)
        r = bench_reference(name)
        rows.append((name, k, r))
        print(f"{name:<10}{k:>16.2f}{r:>20.0f}{r / k:>11.0f}x")
    med = statistics.median(k for _, k, _ in rows)
    npy = bench_numpy_style()
    print(f"median kernel: {med:.2f} ns/step on one core (target <= 15, aim <= 10)")
    print(f"paper-style NumPy stepper (adam): {npy:.0f} ns/step -> kernel is {npy / rows[0][1]:.0f}x "
          f"faster on adam (target >= 1000x)")
    if args.fig2a:
        total, wall, summary = bench_fig2a(args.jobs)
        print(f"fig2a preset: {total:.3g} steps in {wall:.1f} s wall with {args.jobs} jobs "
              f"({summary['ns_per_step_per_worker']:.2f} ns/step per worker; target < 900 s)")


if __name__ == "__main__":
    main()
