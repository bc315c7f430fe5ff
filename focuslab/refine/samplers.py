"""Where a race's fresh replicates come from.  A sampler is called as ``sample(label, lrs, lo, hi)``
and returns the final losses (+inf: diverged) of fresh replicates lo..hi-1 of optimizer ``label`` at
``lrs``, shape (len(lrs), hi - lo); for the candidates of a tuned optimizer it also gets
``settings=`` (the settings they run at, besides the lr).  SimulatorSampler runs the toy (every
simulator call of refine goes through ``simulate`` here); PoolSampler resamples a pool of simulator output, so that the truth
is known (tests, validation/refine_null.py)."""
from __future__ import annotations

import math

import numpy as np

from ..errors import FocuslabError


class PoolSampler:
    """A cell whose replicates are drawn with replacement from a pool of simulator output, so that
    the truth (the pool's means) is known: ``pool`` maps an optimizer label to (lrs, losses) with
    losses of shape (len(lrs), P), replicate-aligned across lrs and optimizers (common random
    numbers).  Fresh replicate j is pool column ``index[j]``; the scan's replicates use their own
    columns.  For a tuned optimizer the pool is (lrs, losses, settings): row i runs at lr lrs[i]
    with the settings settings[i] (a dict).  For validating the procedure (tests,
    validation/refine_null.py)."""

    def __init__(self, pool: dict, seed: int, scan_replicates: int, size: int):
        rng = np.random.default_rng(seed)
        width = next(iter(pool.values()))[1].shape[1]
        self.pool = pool
        self.scan_index = rng.integers(0, width, scan_replicates)
        self.index = rng.integers(0, width, size)

    def rows(self, label: str, lrs, settings: dict | None = None) -> np.ndarray:
        known = np.asarray(self.pool[label][0], dtype=float)
        if len(self.pool[label]) > 2:  # a tuned optimizer's pool: only its rows at these settings
            mask = np.array([s == (settings or {}) for s in self.pool[label][2]])
            known = np.where(mask, known, np.nan)
        with np.errstate(invalid="ignore"):
            rows = [int(np.nanargmin(np.abs(np.log(known) - math.log(lr)))) for lr in np.atleast_1d(lrs)]
        if not np.allclose(known[rows], lrs, rtol=1e-9, atol=0):
            raise FocuslabError(f"pool for {label} lacks lr(s) {lrs} at {settings or 'its settings'}")
        return np.asarray(rows)

    def __call__(self, label: str, lrs, lo: int, hi: int, settings: dict | None = None) -> np.ndarray:
        return self.pool[label][1][np.ix_(self.rows(label, lrs, settings), self.index[lo:hi])]

    def screen_trials(self, label: str, trials) -> tuple[np.ndarray, np.ndarray]:
        """Scan means and standard errors of a tuned optimizer's design ``trials`` (focuslab.tuning.Trial)
        from the scan's replicates."""
        means, sems = np.full(len(trials), np.inf), np.full(len(trials), np.nan)
        for i, t in enumerate(trials):
            y = self.pool[label][1][self.rows(label, [t.lr], dict(t.settings))[0], self.scan_index]
            with np.errstate(invalid="ignore"):
                means[i], sems[i] = y.mean(), y.std(ddof=1) / math.sqrt(len(y))
        return means, sems

    def screen(self, label: str, grid) -> tuple[np.ndarray, np.ndarray]:
        """Scan means and standard errors over ``grid`` from the scan's replicates; a grid lr the
        pool lacks gets mean +inf (so the race never asks for it)."""
        known = self.pool[label][0]
        means, sems = np.full(len(grid), np.inf), np.full(len(grid), np.nan)
        for i, lr in enumerate(grid):
            row = int(np.argmin(np.abs(np.log(known) - math.log(lr))))
            if np.isclose(known[row], lr, rtol=1e-9, atol=0):
                y = self.pool[label][1][row, self.scan_index]
                with np.errstate(invalid="ignore"):
                    means[i], sems[i] = y.mean(), y.std(ddof=1) / math.sqrt(len(y))
        return means, sems


def simulate(config, label: str, cells: np.ndarray, lrs: np.ndarray, keys: np.ndarray, *,
             plans: dict | None = None, settings: dict | None = None) -> dict:
    """Every simulator call of refine goes through here: optimizer ``label`` of ``config`` (at
    ``settings`` over its own: a tuned optimizer's candidate) on ``cells`` (n_cells, 5) x ``lrs`` x
    replicate ``keys`` (n_cells, n_rep) -> per-lane metrics of shape (cells, lrs, replicates), at
    least ``final_loss`` and ``diverged``.  The toy's one entry point (OptimizerEntry.simulate) runs
    built-ins on the numba kernel and any other torch optimizer on the plug-in engine, in the mode
    the scan's probe recorded (``plans``: label -> plan)."""
    entry = config.entry(label)
    if settings:
        entry = entry.with_settings(settings)
    return entry.simulate(cells, lrs, keys, config.steps, plan=(plans or {}).get(label))


class SimulatorSampler:
    """Fresh replicates of one cell from the simulator: fresh replicate j is scan replicate
    R + j (R = the scan's replicates), a new counter-based stream.  Counts the steps it runs."""

    def __init__(self, config, coords: np.ndarray, plans: dict | None = None):
        self.config, self.coords = config, np.asarray(coords, dtype=float).reshape(1, -1)
        self.plans = plans or {}
        self.steps = 0

    def __call__(self, label: str, lrs, lo: int, hi: int, settings: dict | None = None) -> np.ndarray:
        from ..toy.rng import trajectory_keys

        lrs = np.asarray(lrs, dtype=float)
        keys = trajectory_keys(self.config.seed, self.coords, self.config.replicates + np.arange(lo, hi))
        out = simulate(self.config, label, self.coords, lrs, keys, plans=self.plans, settings=settings)
        self.steps += len(lrs) * (hi - lo) * self.config.steps
        return np.where(out["diverged"][0] == 1, np.inf, out["final_loss"][0])

