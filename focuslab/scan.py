"""Scan orchestration: grid -> chunks -> joblib workers -> results store.

The scan knows nothing about update rules (it hands an optimizer's name and resolved settings to
the kernel) and the kernel knows nothing about grids or files.  A chunk is one optimizer on a
contiguous run of grid cells with all of their replicates and all of their learning rates (a
single cell too large for a chunk is split by learning rate); its table is written atomically
by the worker that computed it, so an interrupted scan (Ctrl-C, kill -9) loses at most the chunks
in flight and the same command resumes.  The chunk layout depends only on the config, and every
trajectory's noise only on (seed, cell coordinates, replicate), so the tables are bit-identical
whatever --jobs, backend or interruption history.
"""
from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .axes import CELL_NAMES
from .config import ScanConfig, build_scan_config, scan_table
from .devices import resolve
from .errors import FocuslabError
from .options import setting
from .phase import best_per_cell
from .results import (BEST, CHUNKS, META, RUNS, SHARDS, WriteError, atomic_write_bytes, open_results_dir,
                      read_json, read_parquet, write_json, write_parquet)


@dataclass(frozen=True)
class ScanRun:
    """The scan's own run options (beside focuslab.options.Common): sharding, backends, SLURM."""

    shard: str = setting(None, "compute only shard K of N (balanced by cost); `focuslab merge` assembles the tables",
                         metavar="K/N")
    backend: str = setting("loky", "where chunks run: local processes (loky) or a Dask cluster (dask)",
                           choices=("loky", "dask"))
    scheduler: str = setting(None, "the Dask scheduler (with --backend dask)", metavar="tcp://HOST:PORT")
    sbatch: str = setting(None, "write a SLURM driver script (an array of --shards tasks, then the merge) "
                                "instead of running", metavar="FILE")
    shards: int = setting(None, "array tasks of --sbatch", metavar="N")
    sbatch_option: str = setting(None, "an extra #SBATCH line for --sbatch, e.g. partition=cpu (repeatable)",
                                 metavar="NAME=VALUE", multiple=True)
    dry_run: bool = setting(False, "print the plan (and with --sbatch the script); compute and write nothing")
    allow_long: bool = setting(False, "run a plan estimated at more than a week on this machine")


@dataclass(frozen=True)
class MergeSettings:
    """The merge command's flags."""

    out: str = setting(None, "where runs.parquet, best.parquet and scan.json go (may be one of the shard directories)",
                       metavar="DIR", shown="required")
    quiet: bool = setting(False, "print nothing but errors", short="-q")


@dataclass(frozen=True)
class Chunk:
    optimizer: str  # label
    index: int
    cell_start: int
    cell_stop: int
    trial_start: int  # the optimizer's trials (focuslab.tuning): its lrs when it is not tuned
    trial_stop: int
    cost: int  # optimizer steps (lanes x steps)
    slug: str  # the label as a file-name-safe string

    @property
    def name(self) -> str:
        return f"{self.slug}-{self.index:05d}"


def cell_values(config: ScanConfig) -> np.ndarray:
    """(n_cells, 5) array of cell coordinates in CELL_AXES order, first axis slowest."""
    grids = np.meshgrid(*[np.asarray(config.axes[a].values) for a in CELL_NAMES], indexing="ij")
    return np.column_stack([g.ravel() for g in grids])


#: A plan longer than this (on this machine, at the engines' measured speeds) needs --allow-long.
LONG_SECONDS = 7 * 24 * 3600
#: Bytes per runs-table row in memory while the tables are assembled (22 columns, pandas overhead).
ROW_BYTES = 400


def available_memory() -> int:
    """Bytes of memory this machine has available (MemAvailable; total RAM where that is unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 34


def plan_scan(config: ScanConfig, jobs: int = 1, speeds: dict | None = None) -> dict:
    """What a scan will take, before anything runs: cells, trajectories, optimizer steps, chunks,
    the memory of its tables and of one worker's chunk, and an ETA from the engines' speeds
    (``speeds``: label -> seconds per trajectory-step on one core; the numba kernel's by default)."""
    from .optimizers.entries import NATIVE_NS

    n_trials = {e.label: len(config.trials(e.label)) for e in config.entries}
    trajectories = config.n_cells * config.replicates * sum(n_trials.values())
    per_opt = {label: config.n_cells * n * config.replicates * config.steps for label, n in n_trials.items()}
    speeds = speeds or {}
    seconds = sum(per_opt[e.label] * speeds.get(e.label, NATIVE_NS * 1e-9) for e in config.entries)
    lanes = min(trajectories, max(1, config.chunk_steps // config.steps) * 1)
    return {"cells": config.n_cells, "trajectories": trajectories, "steps": sum(per_opt.values()),
            "chunks": sum(max(1, -(-n // config.chunk_steps)) for n in per_opt.values()),
            "table_bytes": config.n_cells * sum(n_trials.values()) * ROW_BYTES,
            # a worker: the per-step table of bias corrections, and 4 metrics + ~12 state values a lane
            "worker_bytes": (config.steps + 1) * 3 * 8 + lanes * 16 * 8,
            "eta_seconds": seconds / max(1, jobs)}


def engine_speeds(config: ScanConfig, plans: dict) -> dict:
    """label -> seconds per trajectory-step on one core: the numba kernel's, or the probe's
    measurement of an external optimizer (``plans``, focuslab.optimizers.plans)."""
    return {e.label: e.toy_speed(plans.get(e.label)) * 1e-9 for e in config.entries}


def check_plan(config: ScanConfig, plan: dict, allow_long: bool = False, where: str = "scan") -> None:
    """Refuse, in one line naming the flag, a plan that cannot fit in memory or would run for more
    than a week (unless ``allow_long``)."""
    from .runner import _duration

    avail = available_memory()
    gib = 2 ** 30
    grid = ", ".join(f"--{a.replace('_', '-')} {len(config.axes[a])}" for a in (*CELL_NAMES, "lr")
                     if len(config.axes[a]) > 1)
    if plan["table_bytes"] > avail // 2:
        raise FocuslabError(f"{where}: {plan['cells']:.3g} cells ({grid} values) make tables of ~"
                            f"{plan['table_bytes'] / gib:.3g} GiB, more than half of this machine's "
                            f"{avail / gib:.3g} GiB available; use fewer grid values")
    if plan["worker_bytes"] > avail // 4:
        raise FocuslabError(f"{where}: --steps {config.steps} needs ~{plan['worker_bytes'] / gib:.3g} GiB per worker "
                            f"(this machine has {avail / gib:.3g} GiB available); use fewer steps")
    if plan["eta_seconds"] > LONG_SECONDS and not allow_long:
        raise FocuslabError(f"{where}: {plan['steps']:.3g} optimizer steps would take ~{_duration(plan['eta_seconds'])} "
                            f"on this machine ({grid} values, --replicates {config.replicates}, --steps "
                            f"{config.steps}); shrink the grid, shard it over machines (--shard, --sbatch), or "
                            "pass --allow-long")


def preflight(config: ScanConfig, out: Path, jobs: int | None = None, force: bool = False, backend: str | None = None,
              scheduler: str | None = None, device: str = "auto", allow_long: bool = False,
              shard: tuple[int, int] | None = None) -> dict:
    """Everything a scan refuses, checked before anything is written; the run and ``--dry-run``
    both call it, so a dry run refuses what the run would: the device and backend, another
    command's directory or another config in ``out`` (unless ``force``), and a plan that cannot fit
    in memory or would run for more than a week (``check_plan``).  External optimizers are probed
    here (a second or so each; a directory that recorded the probe for this config is reused).
    Returns {device, sim, plans, speed, plan, workers}."""
    from .results import check_results_dir

    device, sim = resolve_device(device, config.entries)  # a missing GPU is one line
    if sim is not None and backend == "dask":
        raise FocuslabError("--backend dask runs the CPU kernel on its workers; drop --device or --backend")
    _check_backend(backend, scheduler)
    cpu_only = [e for e in config.entries if "torch" not in e.toy_engines]
    if cpu_only and sim is not None:
        raise FocuslabError(f"--device {device}: {cpu_only[0].label} is an external torch optimizer, which runs on "
                            "the CPU engine; scan it without --device (or scan the built-ins alone on the GPU)")
    check_results_dir(out, META, config.digest(), {"config": config.to_dict()}, force, "scan", "scan")
    plans = _plans(config, out, force)  # probes external optimizers
    speed = engine_speeds(config, plans)
    workers = 1 if sim is not None else (jobs or os.cpu_count() or 1)
    plan = plan_scan(config, workers, speed)
    if shard is not None:  # shards are balanced by cost: each takes about 1/N of the time
        plan["eta_seconds"] /= shard[1]
    check_plan(config, plan, allow_long)
    return {"device": device, "sim": sim, "plans": plans, "speed": speed, "plan": plan, "workers": workers}


def describe_plan(config: ScanConfig, out: Path, jobs: int | None = None, **checks) -> str:
    """The plan in one line (``focuslab scan --dry-run``) after the run's own checks (``preflight``,
    with ``checks`` its options), its ETA from each engine's speed: the numba kernel's, and for
    external optimizers the probe's measurement."""
    from .runner import _duration

    pre = preflight(config, out, jobs, **checks)
    p, plans, workers = pre["plan"], pre["plans"], pre["workers"]
    how = "at the numba kernel's speed" if not plans else \
        f"at the numba kernel's speed and the probed speed of {len(plans)} external optimizer(s)"
    if pre["sim"] is not None:
        how = f"on {pre['sim'].describe()}"
    return (f"{out}: {config.shape_text()} = {p['trajectories']:.3g} trajectories, {p['steps']:.3g} optimizer "
            f"steps in {p['chunks']} chunks; tables ~{p['table_bytes'] / 2 ** 20:.3g} MiB; ~"
            f"{_duration(p['eta_seconds'])} on {workers} worker(s) {how}")


def write_sbatch(config: ScanConfig, out: Path, sbatch_file, shards, jobs, sbatch_options, dry_run: bool) -> str:
    """The SLURM driver script for ``config`` (focuslab.slurm), written atomically to ``sbatch_file``
    unless ``dry_run``; returns the script, or the line that says where it went."""
    from .config import config_to_toml
    from .slurm import parse_sbatch_options, scan_array_script

    if not sbatch_file and not dry_run:
        raise FocuslabError("--shards goes with --sbatch FILE (or --dry-run)")
    if shards is None or shards < 1:
        raise FocuslabError("--sbatch needs --shards N (N >= 1 array tasks)")
    n_chunks = len(plan_chunks(config))
    if shards > n_chunks:
        raise FocuslabError(f"--shards {shards}: this scan has only {n_chunks} chunks "
                            "(lower --shards or --chunk-steps)")
    script = scan_array_script(out=str(Path(out).resolve()), config_toml=config_to_toml(config), shards=shards,
                               cpus=jobs or 2, extra=parse_sbatch_options(sbatch_options))
    if dry_run:
        return script
    try:
        atomic_write_bytes(Path(sbatch_file), script.encode())
    except WriteError as err:
        raise FocuslabError(f"--sbatch {sbatch_file}: cannot write ({err.strerror})") from None
    Path(sbatch_file).chmod(0o755)
    return f"wrote {sbatch_file}: {shards} array tasks + merge; submit with `bash {sbatch_file}`\n"


def plan_chunks(config: ScanConfig) -> list[Chunk]:
    """Deterministic chunk layout: optimizers in order, each split into runs of whole cells of about
    ``chunk_steps`` optimizer steps; a cell larger than that is split into runs of its trials (its
    learning rates, when it is not tuned)."""
    per_trial = config.replicates * config.steps
    chunks = []
    for label, slug in ((e.label, e.slug) for e in config.entries):
        n_trials = len(config.trials(label))
        per_cell = n_trials * per_trial
        index = 0
        if per_cell <= config.chunk_steps:
            cells_per_chunk = max(1, config.chunk_steps // per_cell)
            for start in range(0, config.n_cells, cells_per_chunk):
                stop = min(start + cells_per_chunk, config.n_cells)
                chunks.append(Chunk(label, index, start, stop, 0, n_trials, (stop - start) * per_cell, slug))
                index += 1
        else:
            trials_per_chunk = max(1, config.chunk_steps // per_trial)
            for cell in range(config.n_cells):
                for lo in range(0, n_trials, trials_per_chunk):
                    hi = min(lo + trials_per_chunk, n_trials)
                    chunks.append(Chunk(label, index, cell, cell + 1, lo, hi, (hi - lo) * per_trial, slug))
                    index += 1
    return chunks


def compute_chunk(config: ScanConfig, chunk: Chunk, plan=None, report=None) -> pd.DataFrame:
    """Simulate one chunk and summarise it into runs-table rows (``plan``: how an external
    optimizer runs, from focuslab.optimizers.plans; ``report``: hears the fraction done)."""
    from .toy.rng import trajectory_keys

    cells = cell_values(config)[chunk.cell_start:chunk.cell_stop]
    trials = config.trials(chunk.optimizer)[chunk.trial_start:chunk.trial_stop]
    entry = config.entry(chunk.optimizer)
    keys = trajectory_keys(config.seed, cells, np.arange(config.replicates))
    out = simulate_trials(entry, trials, cells, keys, config.steps, plan=plan, report=report)
    return summarise(chunk.optimizer, cells, np.array([t.lr for t in trials]), out,
                     trial_columns(config, entry, chunk.trial_start, trials))


def simulate_trials(entry, trials, cells, keys, steps: int, plan=None, report=None, simulator=None) -> dict:
    """Per-lane metrics of shape (cells, trials, replicates): each run of trials that share their
    settings is one engine call over its lrs, with the entry at those settings (a trial's noise
    is its cell's: the same streams for every trial)."""
    from .tuning import groups

    parts = groups(trials)
    if len(parts) == 1 and not parts[0][0]:  # the lrs of an optimizer at its own settings
        return entry.simulate(cells, np.array([t.lr for t in trials]), keys, steps, plan=plan, report=report,
                              simulator=simulator)
    out: dict = {}
    done = 0
    for settings, positions in parts:
        e = entry.with_settings(settings) if settings else entry
        sub = None if report is None else (lambda f, a=done, n=len(positions): report((a + f * n) / len(trials)))
        res = e.simulate(cells, np.array([trials[i].lr for i in positions]), keys, steps, plan=plan, report=sub,
                         simulator=simulator)
        for name, value in res.items():
            if name not in out:
                out[name] = np.empty((value.shape[0], len(trials), value.shape[2]), dtype=value.dtype)
            out[name][:, positions, :] = value
        done += len(positions)
    return out


def trial_columns(config: ScanConfig, entry, first: int, trials) -> dict | None:
    """The per-trial columns of a tuned scan's runs table (None when nothing is tuned): the trial's
    index among its optimizer's, whether it belongs to the design and to the defaults line, and one
    column per tuned setting (the trial's value; an optimizer's own value where it is not tuned;
    empty where it has no such setting)."""
    from .tuning import setting_column

    if config.tuning is None:
        return None
    cols = {"trial": np.arange(first, first + len(trials), dtype=np.int64),
            "design": np.array([t.design for t in trials]), "defaults": np.array([t.defaults for t in trials])}
    for name in config.tuning.columns:
        own = entry.settings.get(name, entry.defaults.get(name))
        values = [dict(t.settings).get(name, own) for t in trials]
        cols[name] = setting_column(values, config.tuning.numeric(name))
    return cols


def _stats(x: np.ndarray, prefix: str) -> dict:
    """Mean, sample std and standard error over the replicate axis (last)."""
    n = x.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.mean(axis=-1)
        std = x.std(axis=-1, ddof=1) if n > 1 else np.full(mean.shape, np.nan)
        inf = np.isinf(mean)
        std = np.where(inf, np.inf, std)
        return {f"{prefix}_mean": mean, f"{prefix}_std": std, f"{prefix}_sem": std / math.sqrt(n)}


def summarise(optimizer: str, cells: np.ndarray, lrs: np.ndarray, out: dict, trials: dict | None = None) -> pd.DataFrame:
    """Per-lane metrics (cells, lrs, reps) -> one row per (cell, lr); ``trials``: per-trial columns
    (one value per lr position) of a tuned scan."""
    n_cells, n_lr, n_rep = out["final_loss"].shape
    diverged = out["diverged"].astype(bool)
    final = np.where(diverged, np.inf, out["final_loss"])  # diverged counts as +inf, never NaN
    cols = {"optimizer": np.full(n_cells * n_lr, optimizer, dtype=object)}
    for j, axis in enumerate(CELL_NAMES):
        cols[axis] = np.repeat(cells[:, j], n_lr)
    cols["lr"] = np.tile(lrs, n_cells)
    for name, values in (trials or {}).items():
        cols[name] = np.tile(values, n_cells)
    cols["replicates"] = np.full(n_cells * n_lr, n_rep, dtype=np.int64)
    stats = {**_stats(final, "final_loss"),
             "final_loss_median": np.median(final, axis=-1),
             **_stats(out["min_loss"], "min_loss"),
             **_stats(out["progress"], "progress")}
    for name, values in stats.items():
        cols[name] = values.reshape(-1)
    cols["diverged"] = diverged.sum(axis=-1).reshape(-1).astype(np.int64)
    return pd.DataFrame(cols)


def assign_shards(chunks: list[Chunk], n: int) -> list[list[Chunk]]:
    """Deterministic, disjoint, cost-balanced split of the chunks into ``n`` shards.

    Longest-processing-time first: chunks by decreasing cost (ties in plan order) go to the least
    loaded shard (ties to the lowest shard).  Each shard keeps plan order.
    """
    loads = [0] * n
    members: list[list[int]] = [[] for _ in range(n)]
    order = sorted(range(len(chunks)), key=lambda i: (-chunks[i].cost, i))
    for i in order:
        k = min(range(n), key=lambda j: (loads[j], j))
        loads[k] += chunks[i].cost
        members[k].append(i)
    return [[chunks[i] for i in sorted(m)] for m in members]


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1 <= K <= N) -> (K, N)."""
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise FocuslabError(f"--shard: expected K/N such as 3/8, got {text!r}") from None
    if not 1 <= k <= n:
        raise FocuslabError(f"--shard: need 1 <= K <= N, got {text!r}")
    return k, n


def _environment() -> dict:
    import numba
    return {"focuslab": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "pandas": pd.__version__, "machine": platform.machine(),
            "host": platform.node(), "cpus": os.cpu_count()}


def config_from_meta(meta: dict) -> ScanConfig:
    """The ScanConfig a scan.json describes, checked against its digest."""
    if "scan" not in meta:
        raise FocuslabError("scan.json has no [scan] table (written by a focuslab older than 0.1); re-run the scan")
    config = build_scan_config(meta["scan"])
    if config.digest() != meta.get("digest"):
        raise FocuslabError("scan.json's config does not rebuild to its digest (written by another focuslab "
                            "version, or an optimizer's code changed since)")
    return config


def open_scan_dir(config: ScanConfig, out: Path, force: bool = False) -> dict:
    """Prepare ``out`` for ``config``: refuse a different config unless ``force``; return metadata."""
    fresh = {"kind": "scan", "config": config.to_dict(), "scan": scan_table(config), "digest": config.digest(),
             "seed": config.seed, "version": __version__, "status": "running",
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "timings": {"attempts": []}}
    return open_results_dir(out, META, config.digest(), fresh, CHUNKS, (RUNS, BEST), force, "scan", kind="scan")


def _check_backend(backend: str | None, scheduler: str | None) -> None:
    """What is wrong with the backend options on their face (the scheduler is reached at run time)."""
    import importlib.util

    if backend in (None, "loky"):
        if scheduler:
            raise FocuslabError("--scheduler is only meaningful with --backend dask")
        return
    if backend != "dask":
        raise FocuslabError(f"--backend: unknown backend {backend!r} (choose loky or dask)")
    if importlib.util.find_spec("dask") is None or importlib.util.find_spec("distributed") is None:
        raise FocuslabError("--backend dask needs dask.distributed: pip install 'focuslab[dask]'")
    if not scheduler:
        raise FocuslabError("--backend dask needs --scheduler tcp://HOST:PORT (a running Dask scheduler)")


def _backend_context(backend: str | None, scheduler: str | None):
    """joblib's parallel_config for the chosen backend (a Dask client when backend == 'dask')."""
    from contextlib import ExitStack

    from joblib import parallel_config

    stack = ExitStack()
    _check_backend(backend, scheduler)
    if backend in (None, "loky"):
        return stack, None
    try:
        from dask.distributed import Client
    except ImportError:
        raise FocuslabError("--backend dask needs dask.distributed: pip install 'focuslab[dask]'") from None
    try:
        client = stack.enter_context(Client(scheduler, timeout="10s", set_as_default=False))
    except (OSError, TimeoutError) as err:
        raise FocuslabError(f"--scheduler {scheduler}: cannot connect ({err})") from None
    workers = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
    stack.enter_context(parallel_config(backend="dask", client=client))  # joblib's dask backend
    return stack, max(workers, 1)


def resolve_device(device: str | None, entries=()):
    """The device a scan runs on (focuslab.devices.resolve, plus 'torch-cpu': the GPU code path on
    the CPU, for checks) -> (name, TorchSimulator or None for the numba kernel).  ``auto`` keeps a
    scan that names an optimizer the torch simulator cannot run on the CPU, where its engine runs."""
    name = resolve(device, extra=("torch-cpu",))
    if (device or "auto") == "auto" and any("torch" not in e.toy_engines for e in entries):
        name = "cpu"
    if name == "cpu":
        return "cpu", None
    from .toy.torch_kernel import TorchSimulator

    return name, TorchSimulator("cpu" if name == "torch-cpu" else name)


def torch_batches(config: ScanConfig, sim):
    """The GPU path for the unit runner: pending chunks computed on a torch device, yielding each
    chunk's table as it is done.  The cells of one optimizer's chunks are packed into launches of at
    most ``sim.lanes_per_call()`` lanes (a compiled step keeps one shape: the last launch is padded
    with copies of its last cell), and the results are split back into the very chunk tables the CPU
    path writes, so resume, shards and merge work unchanged."""
    from .toy.rng import trajectory_keys

    def batches(units):
        all_cells = cell_values(config)
        reps = np.arange(config.replicates)
        chunks = [u.args[1] for u in units]
        for label in dict.fromkeys(c.optimizer for c in chunks):
            entry = config.entry(label)
            groups: dict[tuple, list] = {}
            for c in (c for c in chunks if c.optimizer == label):
                groups.setdefault((c.trial_start, c.trial_stop), []).append(c)
            for (lo, hi), group in groups.items():
                trials = config.trials(label)[lo:hi]
                lrs = np.array([t.lr for t in trials])
                columns = trial_columns(config, entry, lo, trials)
                launch = max(1, sim.lanes_per_call() // (len(lrs) * config.replicates))
                rows = [(c, i) for c in group for i in range(c.cell_start, c.cell_stop)]
                pending = {c.name: [] for c in group}
                seconds = {c.name: 0.0 for c in group}
                for start in range(0, len(rows), launch):
                    batch = rows[start:start + launch]
                    idx = [i for _, i in batch]
                    if sim.fixed_shape and len(idx) < launch and len(rows) > launch:
                        idx += [idx[-1]] * (launch - len(idx))
                    cells = all_cells[idx]
                    t0 = time.perf_counter()
                    res = simulate_trials(entry, trials, cells, trajectory_keys(config.seed, cells, reps),
                                          config.steps, simulator=sim)
                    secs = time.perf_counter() - t0
                    for k, (c, _) in enumerate(batch):
                        pending[c.name].append({m: v[k] for m, v in res.items()})
                        seconds[c.name] += secs / len(batch)
                        if len(pending[c.name]) == c.cell_stop - c.cell_start:
                            done = pending.pop(c.name)
                            stacked = {m: np.stack([r[m] for r in done]) for m in done[0]}
                            table = summarise(label, all_cells[c.cell_start:c.cell_stop], lrs, stacked, columns)
                            yield c.name, {"": table}, seconds[c.name]

    return batches


def _plans(config: ScanConfig, out: Path, force: bool) -> dict:
    """How each external optimizer runs on the toy: what this directory recorded for this very
    config, else a fresh probe (focuslab.optimizers.plans: only optimizers with something to find
    out, the external ones, have a plan)."""
    try:
        old = read_json(Path(out) / META) if (Path(out) / META).exists() and not force else {}
    except FocuslabError:
        old = {}
    recorded = old.get("plugins") or {}
    if old.get("digest") == config.digest() and recorded:  # written whole by the run of this very config
        return recorded
    from .optimizers import plans

    return {label: plan.to_dict() for label, plan in plans(config.entries, config.axes["weight_decay"].values).items()}


def _compute_unit(config: ScanConfig, chunk: Chunk, plan=None, inflight: str | None = None) -> dict:
    """Worker body: a chunk's table (the caller stores it, so workers need no shared filesystem)."""
    from .runner import InflightReporter

    report = InflightReporter(Path(inflight)) if inflight else None
    return {"": compute_chunk(config, chunk, plan, report)}


def run_scan(config: ScanConfig, out: Path, jobs: int | None = None, force: bool = False,
             progress: bool = True, backend: str | None = None, scheduler: str | None = None,
             shard: tuple[int, int] | None = None, log=None, device: str = "auto", allow_long: bool = False,
             announce=None) -> dict:
    """Compute every missing chunk of ``config`` (or of shard K/N of it) in ``out``.

    A full scan then assembles runs/best and marks scan.json complete; a shard records itself in
    shards/K-of-N.json for `focuslab merge`.  A scan that is already complete is left as it is
    (``already_complete`` in the summary).  A plan that cannot fit or would take more than a week is
    refused first (``preflight``), then ``announce(eta)`` is called with the plan's ETA ("~2h10m on 2
    worker(s)").  Returns a summary dict (chunks computed, wall time, ns per optimizer step).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    pre = preflight(config, out, jobs, force, backend, scheduler, device, allow_long, shard)  # nothing written yet
    sim, plans, speed = pre["sim"], pre["plans"], pre["speed"]
    if announce is not None:  # the plan holds: say where the results will go, and when
        from .runner import _duration

        announce(f"~{_duration(pre['plan']['eta_seconds'])} on {pre['workers']} worker(s)")
    from .results import claim_dir, discard_if_empty, hold

    created = claim_dir(out, "scan")
    with hold(out, "scan", f"{shard[0]}-of-{shard[1]}" if shard else None):  # one process computes here
        try:
            return _run_scan(config, out, jobs, force, progress, backend, scheduler, shard, log, sim, plans, speed)
        except BaseException:
            discard_if_empty(out, created, CHUNKS)  # a refused or interrupted first attempt leaves nothing behind
            raise


def _run_scan(config, out, jobs, force, progress, backend, scheduler, shard, log, sim, plans, speed) -> dict:
    from .runner import Progress, Unit, pending, run_units

    meta = open_scan_dir(config, out, force)
    if plans and meta.get("plugins") != plans:
        meta["plugins"] = plans
        write_json(meta, out / META)
    chunks = plan_chunks(config)
    mine = chunks if shard is None else assign_shards(chunks, shard[1])[shard[0] - 1]
    # cost = expected seconds (steps x the engine's ns per step), so that ETAs hold for plug-ins that
    # take microseconds a step beside a kernel that takes nanoseconds; the steps are counted apart
    inflight = out / CHUNKS / ".inflight"
    units = [Unit(c.name, c.cost * speed[c.optimizer],
                  (config, c, plans.get(c.optimizer), str(inflight / f"{c.name}.json") if plans.get(c.optimizer) else None))
             for c in mine]
    steps_of = {c.name: c.cost for c in mine}
    todo = pending(out / CHUNKS, units, log)
    if shard is None and not todo and meta.get("status") == "complete":
        from .results import readable_table

        tables = (RUNS, BEST) + (tuple(TUNED.values()) if config.tuning is not None else ())
        bad = [name for name in tables if not readable_table(out / name)]
        if not bad:
            return {"already_complete": True, "chunks_computed": 0, "chunks_total": len(mine),
                    "wall_seconds": 0.0, "ns_per_step_per_worker": None}
        log(f"{out}: {', '.join(bad)} missing or unreadable; rebuilding from the {len(mine)} chunk files")
    stack, workers = _backend_context(backend, scheduler)
    jobs = 1 if sim is not None else (jobs or workers or os.cpu_count() or 1)
    started = time.time()
    work = sum(steps_of[u.name] for u in todo)
    with stack:
        if sim is None and todo and backend != "dask":  # compile (or load) each kernel once, before the workers
            for label in dict.fromkeys(u.args[1].optimizer for u in todo):  # start and before the ETA's clock
                config.entry(label).warm()
        bar = Progress(sum(u.cost for u in todo), "work", f"scan {out}", enabled=progress, unit_total=len(todo),
                       unit_name="chunks", count_total=work, count_what="steps")
        if sim is not None:
            seconds = run_units(out / CHUNKS, todo, progress=bar, counts={u.name: steps_of[u.name] for u in todo},
                                batched=torch_batches(config, sim))
        else:
            seconds = run_units(out / CHUNKS, todo, _compute_unit, jobs=jobs, progress=bar,
                                inflight=inflight if plans else None, counts={u.name: steps_of[u.name] for u in todo})
        bar.close()
    compute_s = sum(seconds.values())
    wall = time.time() - started
    attempt = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
               "wall_seconds": round(wall, 3), "compute_seconds": round(compute_s, 3),
               "chunks_computed": len(todo), "chunks_total": len(mine), "jobs": jobs,
               "backend": backend or "loky", "steps_computed": work,
               "device": sim.describe() if sim is not None else "cpu (numba kernel)",
               "ns_per_step_per_worker": round(compute_s / work * 1e9, 3) if work else None,
               "environment": _environment()}
    if shard is not None:
        record = {"kind": "shard", "shard": list(shard), "digest": config.digest(),
                  "config": config.to_dict(), "scan": scan_table(config), "chunks": [c.name for c in mine],
                  "cost": sum(c.cost for c in mine), "status": "complete", "timings": attempt}
        (out / SHARDS).mkdir(exist_ok=True)
        write_json(record, out / SHARDS / f"{shard[0]}-of-{shard[1]}.json")
        return {**attempt, "shard": list(shard)}
    finish_scan(config, out, meta, chunks, attempt)
    return attempt


#: The further tables of a tuned scan (focuslab.tuning.tuned_tables).
TUNED = {"best_defaults": "best_defaults.parquet", "tuning": "tuning.parquet"}


def finish_scan(config: ScanConfig, out: Path, meta: dict, chunks: list[Chunk], attempt: dict) -> None:
    """Assemble runs/best (and a tuned scan's best_defaults and tuning curves) from the chunk files
    and mark the scan complete."""
    from .runner import complete

    runs = assemble_runs(out, chunks)
    write_parquet(runs, out / RUNS)
    if config.tuning is None:
        write_parquet(best_per_cell(runs), out / BEST)
    else:
        from .tuning import tuned_tables

        tables = tuned_tables(runs, config)
        write_parquet(tables.pop("best"), out / BEST)
        for name, table in tables.items():
            write_parquet(table, out / TUNED[name])
    complete(out / META, meta, attempt)


def assemble_runs(out: Path, chunks: list[Chunk]) -> pd.DataFrame:
    """Concatenate chunk tables in plan order (independent of completion order)."""
    frames = [read_parquet(Path(out) / CHUNKS / f"{c.name}.parquet") for c in chunks]
    return pd.concat(frames, ignore_index=True)


def merge_shards(dirs: list[Path], out: Path) -> dict:
    """Check that the shards in ``dirs`` form one complete scan and write its tables to ``out``.

    Every shard must come from the same config and seed (same digest) and the same N; each of the
    N shards must appear exactly once and hold all of its chunk files.  The tables are then
    assembled exactly as an unsharded run would (bit-identical contents).
    """
    records = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise FocuslabError(f"merge: {d} is not a directory")
        found = sorted((d / SHARDS).glob("*-of-*.json"))
        if not found:
            raise FocuslabError(f"merge: {d} holds no shard records ({SHARDS}/K-of-N.json)")
        records += [(d, read_json(f)) for f in found]
    first_dir, first = records[0]
    for d, rec in records:
        if rec.get("digest") != first.get("digest"):
            raise FocuslabError(f"merge: shard {rec['shard'][0]}/{rec['shard'][1]} in {d} comes from a "
                                f"different config or seed than shard {first['shard'][0]}/"
                                f"{first['shard'][1]} in {first_dir}")
        if rec["shard"][1] != first["shard"][1]:
            raise FocuslabError(f"merge: {d} has shards of a {rec['shard'][1]}-way split, "
                                f"{first_dir} of a {first['shard'][1]}-way split")
    n = first["shard"][1]
    where: dict[int, list[Path]] = {}
    for d, rec in records:
        where.setdefault(rec["shard"][0], []).append(d)
    dup = {k: v for k, v in where.items() if len(v) > 1}
    if dup:
        k, v = sorted(dup.items())[0]
        raise FocuslabError(f"merge: shard {k}/{n} appears {len(v)} times ({', '.join(map(str, v))})")
    missing = [k for k in range(1, n + 1) if k not in where]
    if missing:
        raise FocuslabError(f"merge: missing shard(s) {', '.join(f'{k}/{n}' for k in missing)}")
    config = build_scan_config(first["scan"])
    if config.digest() != first["digest"]:
        raise FocuslabError("merge: the shards' config does not rebuild to the same digest "
                            "(different focuslab or numpy version?)")
    chunks = plan_chunks(config)
    source = {}
    for d, rec in records:
        for name in rec["chunks"]:
            if not (d / CHUNKS / f"{name}.parquet").exists():
                raise FocuslabError(f"merge: shard {rec['shard'][0]}/{n} in {d} lacks chunk {name}")
            source[name] = d
    absent = [c.name for c in chunks if c.name not in source]
    if absent:
        raise FocuslabError(f"merge: chunks {', '.join(absent[:3])}{'...' if len(absent) > 3 else ''} "
                            "belong to no shard")
    out = Path(out)
    meta = open_scan_dir(config, out)
    t0 = time.time()
    for c in chunks:
        src = source[c.name] / CHUNKS / f"{c.name}.parquet"
        dst = out / CHUNKS / f"{c.name}.parquet"
        if src.resolve() != dst.resolve():
            atomic_write_bytes(dst, src.read_bytes())
    attempt = {"merged_shards": n, "sources": sorted({str(d) for d, _ in records}),
               "shard_timings": [rec["timings"] for _, rec in sorted(records, key=lambda r: r[1]["shard"][0])],
               "wall_seconds": round(time.time() - t0, 3), "environment": _environment()}
    finish_scan(config, out, meta, chunks, attempt)
    return {"shards": n, "chunks": len(chunks), "out": str(out)}
