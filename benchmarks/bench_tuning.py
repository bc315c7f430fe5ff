"""What tuning costs: the default map untuned and tuned at an equal budget, side by side.

    python benchmarks/bench_tuning.py                  # default map: untuned, then tuned at budget 32
    python benchmarks/bench_tuning.py --budget 16 -j 2 --rounds 2

Both runs use the default preset's axes (a = 0.1..1000 x sigma = 0..3, 48 x 50 cells, 20
replicates, 1000 steps) on ``--jobs`` worker processes.  The untuned run is the default scan
(adam, signum, focus, lion at their own settings, their best of 20 lrs); the tuned run gives
adam (beta1, beta2), signum (beta1), focus (beta1, beta2, gamma) and lion (beta1, beta2) their
default spaces and ``--budget`` trials each, plus the defaults line (each one at its own settings,
every lr).  The runs alternate ``--rounds`` times into fresh directories (kernels compiled and
cached first, outside the clock), so a noisy spell on this shared machine hits both; each figure is
the fastest of its rounds.  The CPU, the numba target and the load average are printed beside them.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

OPTIMIZERS = "adam,signum,focus,lion"


def configs(budget: int):
    from focuslab.config import build_scan_config

    plain = build_scan_config(None, {"optimizers": OPTIMIZERS})
    tuned = build_scan_config(None, {"optimizers": OPTIMIZERS, "budget": budget,
                                     "tune": {name: {} for name in OPTIMIZERS.split(",")}})
    return plain, tuned


def run(cfg, jobs: int) -> float:
    from focuslab.scan import run_scan

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_scan(cfg, os.path.join(tmp, "s"), jobs=jobs, progress=False, log=lambda *_: None)
        return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=32)
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    from bench_toy import host_line

    from focuslab.toy.asm import current_target

    plain, tuned = configs(args.budget)
    for cfg in (plain, tuned):  # compile (or load) every kernel once, outside the clock
        for e in cfg.entries:
            e.warm()
    print(host_line())
    print(f"numba target: {current_target()}; load average before: {os.getloadavg()[0]:.2f}")
    best = {"untuned": float("inf"), "tuned": float("inf")}
    for _ in range(args.rounds):
        best["untuned"] = min(best["untuned"], run(plain, args.jobs))
        best["tuned"] = min(best["tuned"], run(tuned, args.jobs))
    print(f"load average after: {os.getloadavg()[0]:.2f}; {args.jobs} worker(s); fastest of {args.rounds}")
    for name, cfg in (("untuned", plain), ("tuned", tuned)):
        steps = cfg.total_steps()
        print(f"  {name:<8} {cfg.shape_text()}\n           {steps:.3g} steps in {best[name]:.1f} s "
              f"({best[name] / steps * 1e9 * args.jobs:.2f} ns per trajectory-step per worker)")
    print(f"  tuned / untuned wall time: {best['tuned'] / best['untuned']:.2f}x "
          f"({tuned.total_steps() / plain.total_steps():.2f}x the steps)")


if __name__ == "__main__":
    main()
