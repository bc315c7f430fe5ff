"""Speed of the toy simulator: ns per optimizer step, per CPU target, beside plain-Python steppers.

    python benchmarks/bench_toy.py                                  # this CPU as numba sees it
    python benchmarks/bench_toy.py --cpu-name haswell,x86-64        # compiled for other targets
    python benchmarks/bench_toy.py --cpu-name haswell --shapes      # also other grid shapes
    python benchmarks/bench_toy.py --cpu-name haswell --fig2a       # also the full fig2a preset
    python benchmarks/bench_toy.py --device cuda --fig2a            # the GPU path (torch), and fig2a on it
    python benchmarks/bench_toy.py --device torch-cpu               # the GPU code path on the CPU (a check)
    python benchmarks/bench_toy.py --plugins                        # any torch optimizer, beside native
    python benchmarks/bench_toy.py --plugins --default-scan         # ... and one on the default map, 2 cores
    python benchmarks/bench_toy.py --modes                          # per-tensor optimizers: each mode, exactness

One "step" is one optimizer update of one 2-D trajectory, including its share of the gradient-noise
normals and the loss/metric bookkeeping.  The grid is 20 cells x 20 lrs x 50 replicates for 1000
steps (20,000 lanes), as a scan chunk of the paper's presets.  Each target is compiled once in its
own worker process (NUMBA_CPU_NAME + NUMBA_CPU_FEATURES="", an empty numba cache); the workers
then answer in turns, --rounds times, one timed run per rule each turn, so every target and rule is
sampled across the whole run and a noisy spell on this shared machine hits them alike.  Each figure
is the fastest of its samples; the hypervisor's steal time during the run is printed beside them.
A target this host cannot execute (AVX-512 on an AVX2 machine) is compiled and its assembly
inspected, but not timed.  The plain-Python reference (focuslab.toy.reference, one
trajectory at a time) and a NumPy stepper written like the paper's scripts run in the same
invocation, so the speed-ups are ratios measured side by side.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

RULES = ("adam", "signum", "focus")
GRID = (20, 20, 50)  # cells, lrs, replicates
SHAPES = {"20 cells x 20 lrs x 50 reps": (20, 20, 50), "1 cell x 20 lrs x 2000 reps": (1, 20, 2000),
          "20 cells x 1 lr x 1000 reps": (20, 1, 1000)}


def grid(n_cells, n_lr, n_rep):
    from focuslab.toy.rng import trajectory_keys

    from focuslab.axes import cell_array

    cells = cell_array(sharpness=np.logspace(-1, 3, n_cells), noise=np.linspace(0, 3, n_cells),
                       weight_decay=0.1, phi=math.pi / 6, c=0.1)
    return cells, np.logspace(-3, 0, n_lr), trajectory_keys(0, cells, np.arange(n_rep))


def time_kernels(shape, repeats=1, steps=1000):
    """ns/step of each rule on ``shape``: interleaved, fastest of ``repeats``."""
    from focuslab.optimizers import builtin as updates
    from focuslab.toy import kernel

    cells, lrs, keys = grid(*shape)
    settings = {name: updates.get(name).resolve({}) for name in RULES}
    best = {name: math.inf for name in RULES}
    for _ in range(repeats):
        for name in RULES:
            t0 = time.perf_counter()
            kernel.run(updates.get(name), settings[name], cells, lrs, keys, steps)
            best[name] = min(best[name], time.perf_counter() - t0)
    lanes = shape[0] * shape[1] * shape[2]
    return {name: best[name] / (lanes * steps) * 1e9 for name in RULES}


def worker(args):
    """Runs in a process compiled for one target: reports its assembly, then answers requests
    read from stdin ("kernel", "shapes", "fig2a JOBS"), one JSON line each."""
    from focuslab.optimizers import builtin as updates
    from focuslab.toy import kernel
    from focuslab.toy.asm import current_target, host_can_run, kernel_asm, packed_stats

    out = {"target": current_target(), "simd": {name: packed_stats(kernel_asm(updates.get(name))) for name in RULES}}
    can, why = host_can_run(os.environ.get("NUMBA_CPU_NAME") or None)
    if can:
        for name in RULES:  # compiled above; load outside any timing
            kernel.warm(updates.get(name), updates.get(name).resolve({}))
    else:
        out["skipped"] = why
    print(json.dumps(out), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or not can:
            print("{}", flush=True)
        elif cmd[0] == "kernel":
            print(json.dumps(time_kernels(GRID)), flush=True)
        elif cmd[0] == "shapes":
            print(json.dumps({label: time_kernels(shape, 3) for label, shape in SHAPES.items()}), flush=True)
        elif cmd[0] == "fig2a":
            print(json.dumps(bench_fig2a(int(cmd[1]))), flush=True)


def bench_reference(name, steps=2000):
    """ns/step of the plain-Python reference stepper (fastest of 3)."""
    from focuslab.toy.reference import trajectory
    from focuslab.toy.rng import normal_pairs
    from focuslab.optimizers.builtin import get

    normals = normal_pairs(np.uint64(1), 0, steps + 1).tolist()
    settings = get(name).resolve({})
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        trajectory(name, settings, sharpness=10.0, noise=1.0, weight_decay=0.1, phi=math.pi / 6, c=0.1,
                   lr=0.01, normals=normals, steps=steps)
        times.append(time.perf_counter() - t0)
    return min(times) / steps * 1e9


def bench_numpy_style(steps=2000):
    """Adam stepped the way the paper's scripts do it: NumPy 2-vectors, a matrix product and a
    np.random.normal call per step (their ~15 us/step figure comes from code of this shape)."""
    rng = np.random.default_rng(0)
    phi = math.pi / 6
    R = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
    a, c, lr, wd, b1, b2, eps, noise = 10.0, 0.1, 0.01, 0.1, 0.9, 0.999, 1e-8, 1.0
    times = []
    for _ in range(3):
        p = rng.normal(size=2) * 1e-4
        m = np.zeros(2)
        v = np.zeros(2)
        best = math.inf
        t0 = time.perf_counter()
        for t in range(1, steps + 1):
            u, w = p @ R
            g = (np.array([a * u * w ** 2 - c, a * u ** 2 * w]) @ R.T) * rng.normal(1.0, noise, 2)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g ** 2
            p = p - lr * ((m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) + wd * p)
            u, w = p @ R
            best = min(best, 0.5 * a * u ** 2 * w ** 2 - c * u)
        times.append(time.perf_counter() - t0)
    return min(times) / steps * 1e9


def bench_fig2a(jobs):
    from focuslab.config import build_scan_config, load_toml
    from focuslab.scan import run_scan

    cfg = build_scan_config(load_toml("fig2a", "scan"))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_scan(cfg, tmp, jobs=jobs, progress=False)
        wall = time.perf_counter() - t0
    return {"steps": cfg.total_steps(), "wall_s": wall, "jobs": jobs,
            "ns_per_step_per_worker": summary["ns_per_step_per_worker"]}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_line() -> str:
    import llvmlite.binding as ll

    f = ll.get_host_cpu_features()
    flags = ", ".join(f"{k} {'yes' if f.get(k) else 'no'}" for k in ("avx2", "fma", "avx512f"))
    return f"CPU: {cpu_model()} (LLVM: {ll.get_host_cpu_name()}; {flags}), {os.cpu_count()} cores"


# FP64 peak of the vector units (the simulator does no matrix products), TFLOP/s, by device name.
FP64_PEAK = {"H200": 34.0, "H100 SXM": 34.0, "H100 NVL": 30.0, "H100 PCIe": 26.0, "H100": 26.0,
             "A100": 9.7, "V100": 7.8, "MI300X": 81.7, "MI250X": 47.9}


def flops_per_lane_step(name: str) -> float:
    """Floating-point operations per lane and step of the torch path, counted on the CPU: every
    elementwise float64 op counts once per element (a polynomial's multiply-adds count twice)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from focuslab.optimizers import builtin as updates
    from focuslab.toy.rng import trajectory_keys
    from focuslab.toy.torch_kernel import TorchSimulator

    class Count(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.dtype == torch.float64 and func._schema.name.split("::")[-1] in (
                    "add", "sub", "mul", "div", "sqrt", "neg", "where", "lt", "gt", "eq", "ne", "maximum", "minimum",
                    "rsub", "abs"):
                Count.flops += out.numel()
            return out

    cells, lrs, _ = grid(4, 5, 8)
    keys = trajectory_keys(0, cells, np.arange(8))
    sim = TorchSimulator("cpu")
    settings = updates.get(name).resolve({})
    runs = {}
    for steps in (2, 4):
        Count.flops = 0
        with Count():
            sim.run(updates.get(name), settings, cells, lrs, keys, steps)
        runs[steps] = Count.flops
    return (runs[4] - runs[2]) / 2 / (4 * 5 * 8)


def bench_torch(device: str, fig2a: bool, rounds: int):
    """The torch path on ``device``: ns/step, lane-steps/s and the fraction of FP64 peak on a large
    grid, then optionally the full fig2a preset through `focuslab scan --device`."""
    import torch

    from focuslab.errors import FocuslabError
    from focuslab.scan import resolve_device
    from focuslab.optimizers import builtin as updates

    try:
        _, sim = resolve_device(device)
    except FocuslabError as err:
        print(f"{device}: not measured: {err}")
        return
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"\n{sim.describe()}")
    shape = (2000, 20, 50) if device == "cuda" else (20, 20, 50)
    steps = 200 if device == "cuda" else 20
    cells, lrs, keys = grid(*shape)
    peak = next((v for k, v in FP64_PEAK.items() if k in name), None)
    for rule in RULES:
        settings = updates.get(rule).resolve({})
        sim.run(updates.get(rule), settings, cells[:shape[0]], lrs, keys, steps)  # compile / warm up
        best = math.inf
        for _ in range(rounds):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            sim.run(updates.get(rule), settings, cells, lrs, keys, steps)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        lane_steps = np.prod(shape) * steps
        flops = flops_per_lane_step(rule)
        tflops = lane_steps * flops / best / 1e12
        frac = f", {tflops / peak:.1%} of {peak:g} TFLOP/s FP64 peak" if peak else ""
        print(f"  {rule:<7} {best / lane_steps * 1e9:8.3f} ns/step  {lane_steps / best:10.3g} lane-steps/s  "
              f"{flops:.0f} flop/lane-step, {tflops:.3g} TFLOP/s{frac}")
    if fig2a:
        from focuslab.config import build_scan_config, load_toml
        from focuslab.scan import run_scan

        cfg = build_scan_config(load_toml("fig2a", "scan"))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_scan(cfg, tmp, progress=False, device=device)
            wall = time.perf_counter() - t0
        print(f"  fig2a preset: {cfg.total_steps():.3g} steps in {wall:.1f} s wall "
              f"({cfg.total_steps() / wall:.3g} lane-steps/s, compilation included)")


PLUGINS = ("torch.optim.AdamW", "pytorch_optimizer.AdaBelief", "pytorch_optimizer.Lion")


def bench_plugins(rounds: int, specs, default_scan: bool, jobs: int):
    """The torch engine for external optimizers (focuslab.toy.plugin) beside the native kernel, in
    one process on one core, interleaved, fastest of ``rounds``: ns per trajectory-step on a scan
    chunk's shape (500 cells x 20 lrs x 20 replicates, the default preset's chunk), 100 steps.
    Then optionally a whole default-preset scan of each plug-in through `focuslab scan` on ``jobs``
    worker processes: wall time and ns per trajectory-step of wall time."""
    import torch

    from focuslab.config import build_scan_config
    from focuslab.optimizers import parse_one
    from focuslab.optimizers import plans

    torch.set_num_threads(1)
    cells, lrs, keys = grid(500, 20, 20)
    steps = 100
    entries = [parse_one("adam")] + [parse_one(s) for s in specs]
    found = plans(entries, [0.1])
    entries[0].warm()
    best = {e.label: math.inf for e in entries}
    for _ in range(rounds):
        for e in entries:
            t0 = time.perf_counter()
            e.simulate(cells, lrs, keys, steps, found.get(e.label))
            best[e.label] = min(best[e.label], time.perf_counter() - t0)
    lanes = cells.shape[0] * len(lrs) * keys.shape[1]
    native = best["adam"] / (lanes * steps) * 1e9
    print(f"\nplug-in engine, one core, {cells.shape[0]} cells x {len(lrs)} lrs x {keys.shape[1]} replicates x "
          f"{steps} steps; fastest of {rounds}")
    for e in entries:
        ns = best[e.label] / (lanes * steps) * 1e9
        mode = found[e.label].mode if e.label in found else "native numba kernel"
        print(f"  {e.label:<32} {ns:8.2f} ns/trajectory-step  ({ns / native:5.1f}x native adam; {mode})")
    if default_scan:
        from focuslab.scan import run_scan

        for e in entries[1:]:
            cfg = build_scan_config(None, {"optimizers": e.spec})
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                run_scan(cfg, tmp, jobs=jobs, progress=False)
                wall = time.perf_counter() - t0
            print(f"  default preset with {e.label} alone: {cfg.total_steps():.3g} trajectory-steps in {wall:.1f} s "
                  f"wall on {jobs} worker(s) ({wall / cfg.total_steps() * 1e9:.1f} ns per trajectory-step of wall "
                  "time, probe and start-up included)")


#: The optimizers of issue 28's table (per-tensor rules, and element-wise ones it timed per tensor).
MODES_SPECS = ("pytorch_optimizer.AdamP", "pytorch_optimizer.SGDSaI", "pytorch_optimizer.Muon:group.use_muon=True",
               "pytorch_optimizer.Conda", "pytorch_optimizer.SPAM:foreach=True",
               "pytorch_optimizer.StableSPAM:foreach=True", "pytorch_optimizer.SOAP", "pytorch_optimizer.Lamb",
               "pytorch_optimizer.RAdam", "pytorch_optimizer.SophiaH", "pytorch_optimizer.AdaHessian",
               "pytorch_optimizer.Adan", "pytorch_optimizer.Prodigy")


def bench_modes(rounds: int, specs):
    """Each optimizer in the mode its probe chose and in "tensors" mode (what a per-tensor rule ran
    in before the vmapped mode), one core, interleaved, fastest of ``rounds``: ns per trajectory-
    step of the steady state (the fastest run of 3s steps minus the fastest of s steps, so set-up,
    the first step's state and the chunk's bookkeeping drop out), on one (lr, weight decay) run of
    the default preset's chunk shape for the batched and vmapped modes (500 cells x 20 replicates =
    10,000 trajectories) and on 512 trajectories for tensors and single.  Then, on a grid of its own
    (3 cells x 2 lrs x 4 replicates, weight decay 0.1 and 0, 150 steps), whether the chosen mode
    equals one instance per trajectory bit for bit (random draws made constant where it draws)."""
    import torch

    import contextlib

    from focuslab.axes import cell_array
    from focuslab.optimizers import parse_one
    from focuslab.optimizers.probe import constant_randomness
    from focuslab.toy import plugin
    from focuslab.toy.plugin import Plan
    from focuslab.toy.rng import trajectory_keys

    torch.set_num_threads(1)

    def problem(n_cells, reps):
        cells = cell_array(sharpness=np.geomspace(0.1, 1000, n_cells), noise=np.linspace(0, 3, n_cells),
                           weight_decay=0.1, phi=math.pi / 6, c=0.1)
        return cells, np.array([1e-2]), trajectory_keys(0, cells, np.arange(reps))

    big, small = problem(500, 20), problem(64, 8)
    sizes = {"batched": (big, 10), "vmapped": (big, 10), "tensors": (small, 2), "single": (small, 2)}
    entries, plans = [], {}
    for spec in specs:
        e = parse_one(spec)
        t0 = time.perf_counter()
        plans[e.label] = e.toy_plan(0.1, time_it=False)
        print(f"  probed {e.label}: {plans[e.label].mode} in {time.perf_counter() - t0:.1f} s", flush=True)
        entries.append(e)
    modes = {e.label: list(dict.fromkeys([plans[e.label].mode, "tensors"])) for e in entries}
    best = {(e.label, m, k): math.inf for e in entries for m in modes[e.label] for k in (1, 3)}
    load = [os.getloadavg()[0]]
    for _ in range(rounds):
        for e in entries:
            for m in modes[e.label]:
                (cells, lrs, keys), s = sizes[m]
                plan = Plan(**{**plans[e.label].to_dict(), "mode": m})
                with np.errstate(all="ignore"):
                    for k in (1, 3):
                        t0 = time.perf_counter()
                        plugin.run(e, plan, cells, lrs, keys, k * s, check_sentinels=False)
                        best[e.label, m, k] = min(best[e.label, m, k], time.perf_counter() - t0)
        load.append(os.getloadavg()[0])

    def ns(label, m):  # the fastest 3s-step run minus the fastest s-step run, per trajectory-step
        (cells, _, keys), s = sizes[m]
        return (best[label, m, 3] - best[label, m, 1]) / (cells.shape[0] * keys.shape[1] * 2 * s) * 1e9

    cells = cell_array(sharpness=[0.3, 30.0, 1000.0], noise=[0.0, 1.5, 3.0], weight_decay=[0.1, 0.0, 0.1],
                       phi=math.pi / 6, c=[0.1, 1.0, 10.0])
    keys, lrs = trajectory_keys(1, cells, np.arange(4)), np.array([1e-3, 3e-2])
    print(f"\nvmapped mode, one core; steady-state ns per trajectory-step, fastest of {rounds}; load average "
          f"{min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores")
    print(f"  {'optimizer':<44}{'mode':>9}{'ns (mode)':>11}{'ns (tensors)':>14}{'speed-up':>10}  exact vs one per trajectory")
    for e in entries:
        plan = plans[e.label]
        with np.errstate(all="ignore"), constant_randomness() if plan.stochastic else contextlib.nullcontext():
            got = plugin.run(e, plan, cells, lrs, keys, 150, check_sentinels=False)
            want = plugin.run(e, Plan(**{**plan.to_dict(), "mode": "single"}), cells, lrs, keys, 150)
        exact = ("bit for bit" if all(np.array_equal(got[k], want[k], equal_nan=True) for k in want) else "DIFFERS") \
            + (" (its random draws made constant)" if plan.stochastic else "")
        mine, tensors = ns(e.label, plan.mode), ns(e.label, "tensors")
        print(f"  {e.label:<44}{plan.mode:>9}{mine:>11.0f}{tensors:>14.0f}{tensors / mine:>9.3g}x  {exact}")


def steal_ticks() -> int | None:
    """The hypervisor's steal time so far (clock ticks, all CPUs), from /proc/stat (Linux)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        return int(fields[8])
    except (OSError, IndexError, ValueError):
        return None


class Worker:
    def __init__(self, target, cache):
        from focuslab.toy.asm import target_env

        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], env=target_env(target, cache),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read(target or "host")

    def _read(self, what):
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker for {what} failed (see its error above)")
        return json.loads(line)

    def ask(self, request: str):
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return self._read(request)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-name", default="", help="comma list of numba/LLVM CPU targets (haswell = AVX2, "
                    "x86-64 = SSE2, skylake-avx512); default: this host")
    ap.add_argument("--rounds", type=int, default=9, help="timed runs per target and rule (fastest kept)")
    ap.add_argument("--shapes", action="store_true", help="also time other grid shapes")
    ap.add_argument("--fig2a", action="store_true", help="also time the full fig2a preset (per target)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--device", choices=["cuda", "torch-cpu"], default=None,
                    help="time the torch path (the GPU code path) on this device instead of the CPU kernel")
    ap.add_argument("--plugins", nargs="*", default=None, metavar="SPEC",
                    help=f"time external torch optimizers on the toy beside native adam [{', '.join(PLUGINS)}]")
    ap.add_argument("--default-scan", action="store_true",
                    help="with --plugins: also scan the default preset with each plug-in (wall time, --jobs workers)")
    ap.add_argument("--modes", nargs="*", default=None, metavar="SPEC",
                    help="time per-tensor optimizers in their probed mode and in tensors mode, and check "
                         "exactness [issue 28's table]")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.device:
        print(host_line())
        return bench_torch(args.device, args.fig2a, max(1, args.rounds // 3))
    if args.modes is not None:
        print(host_line())
        return bench_modes(max(1, args.rounds // 3), args.modes or MODES_SPECS)
    if args.plugins is not None:
        print(host_line())
        return bench_plugins(max(1, args.rounds // 3), args.plugins or PLUGINS, args.default_scan, args.jobs)
    targets = [t.strip() for t in args.cpu_name.split(",") if t.strip()] or [None]
    print(host_line())
    print(f"kernel grid: {GRID[0]} cells x {GRID[1]} lrs x {GRID[2]} replicates x 1000 steps, one core; "
          f"fastest of {args.rounds} rounds, targets and rules interleaved")
    caches = [tempfile.TemporaryDirectory() for _ in targets]
    workers = [Worker(t, c.name) for t, c in zip(targets, caches)]
    steal0, t0 = steal_ticks(), time.time()
    best = [{name: math.inf for name in RULES} for _ in workers]
    reference = {name: math.inf for name in RULES}
    numpy_ns = math.inf
    for _ in range(args.rounds):
        for w, b in zip(workers, best):
            for name, ns in w.ask("kernel").items():
                b[name] = min(b[name], ns)
        for name in RULES:
            reference[name] = min(reference[name], bench_reference(name, steps=500))
        numpy_ns = min(numpy_ns, bench_numpy_style(steps=500))
    extra = [{**({"shapes": w.ask("shapes")} if args.shapes else {}),
              **({"fig2a": w.ask(f"fig2a {args.jobs}")} if args.fig2a else {})} for w in workers]
    for w in workers:
        w.close()
    steal1, wall = steal_ticks(), time.time() - t0
    print(f"\n{'target':<16}{'SIMD':>6}" + "".join(f"{n + ' ns/step':>16}" for n in RULES) + f"{'adam vs NumPy':>15}")
    for w, b in zip(workers, best):
        r = w.info
        width = max(s["width"] for s in r["simd"].values())
        avx512 = " +AVX-512 registers" if any(s["avx512_regs"] for s in r["simd"].values()) else ""
        if "skipped" in r:
            print(f"{r['target']:<16}{width:>6}  not timed: {r['skipped']} (compiled: {width}-bit{avx512})")
            continue
        print(f"{r['target']:<16}{width:>6}" + "".join(f"{b[n]:>16.2f}" for n in RULES)
              + f"{numpy_ns / b['adam']:>14.0f}x")
    print("\nplain-Python reference stepper (ns/step): " + ", ".join(f"{n} {reference[n]:.0f}" for n in RULES))
    print(f"paper-style NumPy stepper (adam): {numpy_ns:.0f} ns/step")
    if steal0 is not None and steal1 is not None:
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        print(f"hypervisor steal during the timed rounds: {(steal1 - steal0) / hz:.2f} CPU-s of {wall:.0f} s wall")
    for w, e in zip(workers, extra):
        if "shapes" in e and e["shapes"]:
            print(f"\n{w.info['target']}: ns/step by grid shape")
            for label, ns in e["shapes"].items():
                print(f"  {label:<30}" + "  ".join(f"{n} {ns[n]:5.2f}" for n in RULES))
        if "fig2a" in e and e["fig2a"]:
            f = e["fig2a"]
            print(f"\n{w.info['target']}: fig2a preset, {f['steps']:.3g} steps in {f['wall_s']:.1f} s wall with "
                  f"{f['jobs']} jobs ({f['ns_per_step_per_worker']:.2f} ns/step per worker)")
    for c in caches:
        c.cleanup()


if __name__ == "__main__":
    main()
