"""Computing chunks: one optimizer's trials on a run of cells, simulated by the optimizer's engine
(the numba kernel, the torch path on a GPU, or an external optimizer's plan) and summarised into
runs-table rows.  A worker's body (``_compute_unit``) returns its table; the caller stores it."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..axes import CELL_NAMES
from ..config import ScanConfig
from .plan import Chunk, cell_values


def compute_chunk(config: ScanConfig, chunk: Chunk, plan=None, report=None) -> pd.DataFrame:
    """Simulate one chunk and summarise it into runs-table rows (``plan``: how an external
    optimizer runs, from focuslab.optimizers.plans; ``report``: hears the fraction done)."""
    from ..toy.rng import trajectory_keys

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
    from ..tuning import groups

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
    from ..tuning import setting_column

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


def torch_batches(config: ScanConfig, sim):
    """The GPU path for the unit runner: pending chunks computed on a torch device, yielding each
    chunk's table as it is done.  The cells of one optimizer's chunks are packed into launches of at
    most ``sim.lanes_per_call()`` lanes (a compiled step keeps one shape: the last launch is padded
    with copies of its last cell), and the results are split back into the very chunk tables the CPU
    path writes, so resume, shards and merge work unchanged."""
    from ..toy.rng import trajectory_keys

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


def _compute_unit(config: ScanConfig, chunk: Chunk, plan=None, inflight: str | None = None) -> dict:
    """Worker body: a chunk's table (the caller stores it, so workers need no shared filesystem)."""
    from ..runner import InflightReporter

    report = InflightReporter(Path(inflight)) if inflight else None
    return {"": compute_chunk(config, chunk, plan, report)}
