"""Scan orchestration: grid -> chunks -> joblib workers -> results store.

The scan knows nothing about update rules (it asks the registry for a code and a hyperparameter
vector) and the kernel knows nothing about grids or files.  A chunk is one optimizer on a contiguous
run of grid cells with all of their learning rates and replicates; its table is written atomically
by the worker that computed it, so an interrupted scan (Ctrl-C, kill -9) loses at most the chunks
in flight and the same command resumes.  The chunk layout depends only on the config, and every
trajectory's noise only on (seed, cell coordinates, replicate), so the tables are bit-identical
whatever --jobs, backend or interruption history.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .config import CELL_AXES, ScanConfig
from .errors import FocuslabError
from .phase import best_per_cell
from .results import (BEST, CHUNKS, META, RUNS, prepare_out_dir, read_json, read_parquet,
                      write_json, write_parquet)


@dataclass(frozen=True)
class Chunk:
    optimizer: str
    index: int
    cell_start: int
    cell_stop: int
    cost: int  # optimizer steps (lanes x steps)

    @property
    def name(self) -> str:
        return f"{self.optimizer}-{self.index:05d}"


def cell_values(config: ScanConfig) -> np.ndarray:
    """(n_cells, 5) array of cell coordinates in CELL_AXES order, first axis slowest."""
    grids = np.meshgrid(*[np.asarray(config.axes[a].values) for a in CELL_AXES], indexing="ij")
    return np.column_stack([g.ravel() for g in grids])


def plan_chunks(config: ScanConfig) -> list[Chunk]:
    """Deterministic chunk layout: optimizers in order, each split into runs of whole cells."""
    per_cell = len(config.axes["lr"]) * config.replicates * config.steps
    cells_per_chunk = max(1, config.chunk_steps // per_cell)
    chunks = []
    for opt in config.optimizers:
        for index, start in enumerate(range(0, config.n_cells, cells_per_chunk)):
            stop = min(start + cells_per_chunk, config.n_cells)
            chunks.append(Chunk(opt, index, start, stop, (stop - start) * per_cell))
    return chunks


def compute_chunk(config: ScanConfig, chunk: Chunk) -> pd.DataFrame:
    """Simulate one chunk and summarise it into runs-table rows."""
    from .toy.kernel import run
    from .toy.rng import trajectory_keys
    from .toy.updates import RULES

    cells = cell_values(config)[chunk.cell_start:chunk.cell_stop]
    lrs = np.asarray(config.axes["lr"].values)
    rule = RULES[chunk.optimizer]
    sharp, noise, wd, theta, c = cells.T
    kernel_cells = np.column_stack([sharp, noise, wd, np.cos(theta), np.sin(theta), c])
    keys = trajectory_keys(config.seed, cells, np.arange(config.replicates))
    out = run(rule.code, rule.vector(config.hyperparameters(chunk.optimizer)), kernel_cells, lrs,
              keys, config.steps)
    return summarise(chunk.optimizer, cells, lrs, out)


def _stats(x: np.ndarray, prefix: str) -> dict:
    """Mean, sample std and standard error over the replicate axis (last)."""
    n = x.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.mean(axis=-1)
        std = x.std(axis=-1, ddof=1) if n > 1 else np.full(mean.shape, np.nan)
        inf = np.isinf(mean)
        std = np.where(inf, np.inf, std)
        return {f"{prefix}_mean": mean, f"{prefix}_std": std, f"{prefix}_sem": std / math.sqrt(n)}


def summarise(optimizer: str, cells: np.ndarray, lrs: np.ndarray, out: dict) -> pd.DataFrame:
    """Per-lane metrics (cells, lrs, reps) -> one row per (cell, lr)."""
    n_cells, n_lr, n_rep = out["final_loss"].shape
    diverged = out["diverged"].astype(bool)
    final = np.where(diverged, np.inf, out["final_loss"])  # diverged counts as +inf, never NaN
    cols = {"optimizer": np.full(n_cells * n_lr, optimizer, dtype=object)}
    for j, axis in enumerate(CELL_AXES):
        cols[axis] = np.repeat(cells[:, j], n_lr)
    cols["lr"] = np.tile(lrs, n_cells)
    cols["replicates"] = np.full(n_cells * n_lr, n_rep, dtype=np.int64)
    stats = {**_stats(final, "final_loss"),
             "final_loss_median": np.median(final, axis=-1),
             **_stats(out["min_loss"], "min_loss"),
             **_stats(out["progress"], "progress")}
    for name, values in stats.items():
        cols[name] = values.reshape(-1)
    cols["diverged"] = diverged.sum(axis=-1).reshape(-1).astype(np.int64)
    return pd.DataFrame(cols)


def _run_and_store(config: ScanConfig, chunk: Chunk, chunk_dir: str) -> tuple[str, float]:
    """Worker body: compute a chunk and write its table atomically."""
    t0 = time.perf_counter()
    table = compute_chunk(config, chunk)
    write_parquet(table, Path(chunk_dir) / f"{chunk.name}.parquet")
    return chunk.name, time.perf_counter() - t0


def _environment() -> dict:
    import numba
    return {"focuslab": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "pandas": pd.__version__, "machine": platform.machine(),
            "host": platform.node(), "cpus": os.cpu_count()}


def open_scan_dir(config: ScanConfig, out: Path, force: bool = False) -> dict:
    """Prepare ``out`` for ``config``: refuse a different config unless ``force``; return metadata."""
    out = prepare_out_dir(out)
    meta_path = out / META
    if meta_path.exists():
        old = read_json(meta_path)
        if old.get("digest") != config.digest():
            if not force:
                raise FocuslabError(f"--out {out} holds a scan with a different config "
                                    f"(digest {old.get('digest')} vs {config.digest()}); "
                                    "use another --out or --force to replace it")
            shutil.rmtree(out / CHUNKS, ignore_errors=True)
            for name in (RUNS, BEST):
                (out / name).unlink(missing_ok=True)
            (out / CHUNKS).mkdir()
        else:
            return old
    meta = {"kind": "scan", "config": config.to_dict(), "digest": config.digest(),
            "seed": config.seed, "version": __version__, "status": "running",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "timings": {"attempts": []}}
    write_json(meta, meta_path)
    return meta


def missing_chunks(config: ScanConfig, out: Path, chunks: list[Chunk] | None = None) -> list[Chunk]:
    chunks = plan_chunks(config) if chunks is None else chunks
    return [c for c in chunks if not (Path(out) / CHUNKS / f"{c.name}.parquet").exists()]


def run_scan(config: ScanConfig, out: Path, jobs: int | None = None, force: bool = False,
             progress: bool = True, backend: str | None = None) -> dict:
    """Compute every missing chunk of ``config`` in ``out`` and assemble the tables.

    Returns a summary dict (chunks computed/reused, wall time, ns per optimizer step).
    """
    from joblib import Parallel, delayed, parallel_config
    from tqdm.auto import tqdm

    out = Path(out)
    meta = open_scan_dir(config, out, force)
    chunks = plan_chunks(config)
    todo = missing_chunks(config, out, chunks)
    jobs = jobs or os.cpu_count() or 1
    started = time.time()
    work = sum(c.cost for c in todo)
    compute_s = 0.0
    if todo:
        bar = tqdm(total=work, unit="step", unit_scale=True, dynamic_ncols=True,
                   disable=not progress or not sys.stderr.isatty(),
                   desc=f"scan {len(todo)}/{len(chunks)} chunks")
        cost = {c.name: c.cost for c in todo}
        with parallel_config(backend=backend) if backend else _null():
            results = Parallel(n_jobs=min(jobs, len(todo)), return_as="generator_unordered")(
                delayed(_run_and_store)(config, c, str(out / CHUNKS)) for c in todo)
            for name, seconds in results:
                compute_s += seconds
                bar.update(cost[name])
        bar.close()
    wall = time.time() - started
    runs = assemble_runs(out, chunks)
    best = best_per_cell(runs)
    write_parquet(runs, out / RUNS)
    write_parquet(best, out / BEST)
    meta["status"] = "complete"
    attempt = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
               "wall_seconds": round(wall, 3), "compute_seconds": round(compute_s, 3),
               "chunks_computed": len(todo), "chunks_total": len(chunks), "jobs": jobs,
               "steps_computed": work,
               "ns_per_step_per_worker": round(compute_s / work * 1e9, 3) if work else None,
               "environment": _environment()}
    meta["timings"]["attempts"].append(attempt)
    write_json(meta, out / META)
    return attempt


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def assemble_runs(out: Path, chunks: list[Chunk]) -> pd.DataFrame:
    """Concatenate chunk tables in plan order (independent of completion order)."""
    frames = [read_parquet(Path(out) / CHUNKS / f"{c.name}.parquet") for c in chunks]
    return pd.concat(frames, ignore_index=True)
