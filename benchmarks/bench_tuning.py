"""What tuning costs: the default map untuned and tuned at an equal budget, side by side.

    python benchmarks/bench_tuning.py                  # default map: untuned, then tuned at budget 32
    python benchmarks/bench_tuning.py --budget 16 -j 2 --rounds 2
    python benchmarks/bench_tuning.py --markdown docs/tables/tuning-cost.md

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
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

OPTIMIZERS = "adam,signum,focus,lion"


def configs(budget: int):
    from focuslab.config import build_scan_config

    plain = build_scan_config(None, {"optimizers": OPTIMIZERS})
    tuned = build_scan_config(None, {"optimizers": OPTIMIZERS, "budget": budget,
                                     "tune": {name: {} for name in OPTIMIZERS.split(",")}})
    return plain, tuned


def run(cfg, jobs: int) -> float:
    from focuslab.scan import run_scan

    with tempfile.TemporaryDirectory(prefix="focuslab-bench-") as tmp:
        t0 = time.perf_counter()
        run_scan(cfg, os.path.join(tmp, "s"), jobs=jobs, progress=False, log=lambda *_: None)
        return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=32)
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--markdown", type=Path, help="also write the table there (Markdown)")
    args = ap.parse_args()
    from bench_main_job import busy_seconds
    from bench_toy import host_line

    from focuslab.toy.asm import current_target

    plain, tuned = configs(args.budget)
    for cfg in (plain, tuned):  # compile (or load) every kernel once, outside the clock
        for e in cfg.entries:
            e.warm()
    load0, busy0, t0 = os.getloadavg()[0], busy_seconds(), time.perf_counter()
    best = {"untuned": float("inf"), "tuned": float("inf")}
    for _ in range(args.rounds):
        best["untuned"] = min(best["untuned"], run(plain, args.jobs))
        best["tuned"] = min(best["tuned"], run(tuned, args.jobs))
    busy = (busy_seconds() - busy0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    lines = [f"<!-- written by `python benchmarks/bench_tuning.py --budget {args.budget} -j {args.jobs} --rounds "
             f"{args.rounds} --markdown` on {when}, commit {commit} -->",
             "| the default map (2400 cells, 20 replicates, 1000 steps) | trials | optimizer steps | wall | "
             "ns per trajectory-step per worker |", "|---|---|---:|---:|---:|"]
    for name, cfg in (("adam, signum, focus, lion at their own settings, best of 20 lrs", plain),
                      (f"the same, each tuned at budget {args.budget} (plus its defaults line)", tuned)):
        key = "untuned" if cfg is plain else "tuned"
        steps = cfg.total_steps()
        lines.append(f"| {name} | {cfg.shape_text().split(' x ', 1)[1].rsplit(' x ', 1)[0]} | {steps:.3g} | "
                     f"{best[key]:.0f} s | {best[key] / steps * 1e9 * args.jobs:.1f} |")
    lines.append("")
    lines.append(f"Tuned / untuned wall time: {best['tuned'] / best['untuned']:.2f}x for "
                 f"{tuned.total_steps() / plain.total_steps():.2f}x the steps (trials that share their settings run "
                 f"in one kernel call; a design's trials rarely do, so the noise draws are shared by fewer lanes). "
                 f"{host_line()}; numba target {current_target()}; {args.jobs} worker(s), fastest of {args.rounds}; "
                 f"{when}, commit {commit}. The machine was {100 * busy:.0f} % busy over the run (load average "
                 f"{load0:.1f} before, {os.getloadavg()[0]:.1f} after)"
                 + (": a shared machine, read these as upper bounds." if busy > 1.1 * min(1.0, args.jobs / (os.cpu_count() or 1))
                    else "."))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.markdown:
        from focuslab.results import atomic_write_bytes

        atomic_write_bytes(args.markdown, text.encode())


if __name__ == "__main__":
    main()
