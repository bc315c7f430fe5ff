"""Time the README's main job as a new user runs it: `focuslab scan && focuslab plot results/default`
in a fresh directory, first with an empty numba cache (the kernels compiled), then again into
another fresh directory with the cache warm.  Says which CPU it ran on, the numba target and the
SIMD width the kernel was compiled to, and how loaded the machine was (load average and the CPU
time other processes took while it ran), so that a figure from a shared machine is labelled as such.

    python benchmarks/bench_main_job.py                       # print the table
    python benchmarks/bench_main_job.py --markdown docs/tables/timing.md --readme README.md
    NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES="" python benchmarks/bench_main_job.py   # as an AVX2 machine
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_toy import host_line  # noqa: E402  (the CPU, LLVM's name for it, AVX2/FMA/AVX-512)


def busy_seconds() -> float:
    """CPU seconds all processes have used (user + nice + system), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (int(fields[0]) + int(fields[1]) + int(fields[2])) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    t = os.times()
    return t.children_user + t.children_system


def run(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr}")
    return wall


def kernel_target(env: dict) -> str:
    """The numba target and the widest packed-double SIMD in the adam kernel's assembly (compiled
    afresh: a kernel loaded from numba's cache has no assembly to read)."""
    fresh = tempfile.mkdtemp(prefix="focuslab-asm-")
    env = {**env, "NUMBA_CACHE_DIR": fresh}
    code = ("from focuslab.toy.asm import current_target, kernel_asm, packed_stats\n"
            "s = packed_stats(kernel_asm('adam'))\n"
            "w = {512: '512-bit (zmm)', 256: '256-bit (ymm)', 128: '128-bit (xmm)'}.get(s['width'], 'scalar')\n"
            "isa = 'AVX-512' if s['zmm'] or s['avx512_regs'] else 'AVX2' if s['ymm'] else 'SSE2'\n"
            "print(f\"{current_target()}; kernel vectorised to {w} packed doubles, {isa} instructions\")")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    shutil.rmtree(fresh, ignore_errors=True)
    return res.stdout.strip() or res.stderr.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", type=Path, help="also write the table there (Markdown)")
    ap.add_argument("--readme", type=Path, help="also put it in this README, between its <!-- main-job-timing --> "
                                                 "and <!-- /main-job-timing --> lines")
    args = ap.parse_args()
    focuslab = shutil.which("focuslab")
    if focuslab is None:
        sys.exit("focuslab is not on PATH (pip install -e .)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="focuslab-main-job-") as tmp:
        env = {**os.environ, "NUMBA_CACHE_DIR": str(Path(tmp) / "numba-cache")}
        load_before = os.getloadavg()
        busy0, own0, t0 = busy_seconds(), own_seconds(), time.perf_counter()
        for label in ("empty numba cache (kernels compiled)", "warm numba cache"):
            cwd = Path(tmp) / label.split()[0]
            cwd.mkdir()
            scan = run([focuslab, "scan", "-q"], cwd, env)
            plot = run([focuslab, "plot", "results/default", "-q"], cwd, env)
            rows.append((label, scan, plot))
        elapsed = time.perf_counter() - t0
        others = max(0.0, (busy_seconds() - busy0) - (own_seconds() - own0))
        load_after = os.getloadavg()
        target = kernel_target(env)
    cores = os.cpu_count() or 1
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    quiet = others / (elapsed * cores)
    lines = [f"<!-- written by `python benchmarks/bench_main_job.py --markdown` on {when}, commit {commit} -->",
             "| `focuslab scan && focuslab plot results/default`, a fresh directory | scan | plot |",
             "|---|---:|---:|"]
    lines += [f"| {label} | {scan:.1f} s | {plot:.1f} s |" for label, scan, plot in rows]
    lines.append("")
    lines.append(f"{host_line()}; numba target {target}; Python {platform.python_version()}; "
                 f"{when}, commit {commit}. Other processes used {100 * quiet:.0f} % of the machine's CPU time "
                 f"while it ran (load average {load_before[0]:.1f} before, {load_after[0]:.1f} after): "
                 + ("a quiet machine." if quiet < 0.1 else "a shared machine: read these as upper bounds."))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.readme:
        readme = args.readme.read_text()
        start, end = "<!-- main-job-timing -->\n", "<!-- /main-job-timing -->"
        if start not in readme or end not in readme:
            sys.exit(f"{args.readme} has no {start.strip()} ... {end} lines to put the table between")
        head, rest = readme.split(start, 1)
        args.readme.write_text(head + start + text + rest[rest.index(end):])
    return 0


if __name__ == "__main__":
    sys.exit(main())
