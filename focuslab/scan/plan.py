"""Planning a scan, before anything runs: the chunk layout, what the plan costs (cells, steps,
memory, an ETA from the engines' speeds), the shards, the device, and ``preflight`` -- everything a
scan refuses, checked once for the run and for ``--dry-run`` alike -- and the SLURM script."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..axes import CELL_NAMES
from ..config import ScanConfig
from ..devices import resolve, usable_cpus
from ..errors import FocuslabError
from ..results import META, WriteError, atomic_write_bytes, read_json


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
    from ..optimizers.entries import NATIVE_NS

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
    from ..runner import _duration

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


def preflight(config: ScanConfig, out: Path, jobs: int | None = None, *, force: bool = False,
              backend: str | None = None, scheduler: str | None = None, device: str = "auto",
              allow_long: bool = False, shard: tuple[int, int] | None = None) -> dict:
    """Everything a scan refuses, checked before anything is written; the run and ``--dry-run``
    both call it, so a dry run refuses what the run would: the device and backend, another
    command's directory or another config in ``out`` (unless ``force``), and a plan that cannot fit
    in memory or would run for more than a week (``check_plan``).  External optimizers are probed
    here (a second or so each; a directory that recorded the probe for this config is reused).
    Returns {device, sim, plans, speed, plan, workers}."""
    from ..results import check_results_dir

    device, sim = resolve_device(device, config.entries)  # a missing GPU is one line
    if sim is not None and backend == "dask":
        raise FocuslabError("--backend dask runs the CPU kernel on its workers; drop --device or --backend")
    _check_backend(backend, scheduler)
    cpu_only = [e for e in config.entries if "torch" not in e.toy_engines]
    if cpu_only and sim is not None:
        raise FocuslabError(f"--device {device}: {cpu_only[0].label} is an external torch optimizer, which runs on "
                            "the CPU engine; scan it without --device (or scan the built-ins alone on the GPU)")
    check_results_dir(out, META, config.digest(), {"config": config.to_dict()}, force=force, what="scan", kind="scan")
    plans = _plans(config, out, force)  # probes external optimizers
    speed = engine_speeds(config, plans)
    workers = 1 if sim is not None else (jobs or usable_cpus())
    plan = plan_scan(config, workers, speed)
    if shard is not None:  # shards are balanced by cost: each takes about 1/N of the time
        plan["eta_seconds"] /= shard[1]
    check_plan(config, plan, allow_long)
    return {"device": device, "sim": sim, "plans": plans, "speed": speed, "plan": plan, "workers": workers}


def describe_plan(config: ScanConfig, out: Path, jobs: int | None = None, **checks) -> str:
    """The plan in one line (``focuslab scan --dry-run``) after the run's own checks (``preflight``,
    with ``checks`` its options), its ETA from each engine's speed: the numba kernel's, and for
    external optimizers the probe's measurement."""
    from ..runner import _duration

    pre = preflight(config, out, jobs, **checks)
    p, plans, workers = pre["plan"], pre["plans"], pre["workers"]
    how = "at the numba kernel's speed" if not plans else \
        f"at the numba kernel's speed and the probed speed of {len(plans)} external optimizer(s)"
    if pre["sim"] is not None:
        how = f"on {pre['sim'].describe()}"
    return (f"{out}: {config.shape_text()} = {p['trajectories']:.3g} trajectories, {p['steps']:.3g} optimizer "
            f"steps in {p['chunks']} chunks; tables ~{p['table_bytes'] / 2 ** 20:.3g} MiB; ~"
            f"{_duration(p['eta_seconds'])} on {workers} worker(s) {how}")


def write_sbatch(config: ScanConfig, out: Path, *, sbatch_file, shards, jobs, sbatch_options, dry_run: bool) -> str:
    """The SLURM driver script for ``config`` (focuslab.slurm), written atomically to ``sbatch_file``
    unless ``dry_run``; returns the script, or the line that says where it went."""
    from ..config import config_to_toml
    from ..slurm import parse_sbatch_options, scan_array_script

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


def resolve_device(device: str | None, entries=()):
    """The device a scan runs on (focuslab.devices.resolve, plus 'torch-cpu': the GPU code path on
    the CPU, for checks) -> (name, TorchSimulator or None for the numba kernel).  ``auto`` keeps a
    scan that names an optimizer the torch simulator cannot run on the CPU, where its engine runs."""
    name = resolve(device, extra=("torch-cpu",))
    if (device or "auto") == "auto" and any("torch" not in e.toy_engines for e in entries):
        name = "cpu"
    if name == "cpu":
        return "cpu", None
    from ..toy.torch_kernel import TorchSimulator

    return name, TorchSimulator("cpu" if name == "torch-cpu" else name)


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
    from ..optimizers import plans

    return {label: plan.to_dict() for label, plan in plans(config.entries, config.axes["weight_decay"].values).items()}
