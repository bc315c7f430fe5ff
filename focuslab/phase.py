"""Reductions of scan tables: best learning rate per (optimizer, cell)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .axes import CELL_NAMES

#: The label of a cell whose winner the scan's replicates cannot tell (``winners``).
UNDECIDED = "undecided"


def best_per_cell(runs: pd.DataFrame, cell_cols=CELL_NAMES, metric: str = "final_loss_mean") -> pd.DataFrame:
    """One row per (optimizer, cell): the lr with the lowest ``metric`` (default final_loss_mean).

    Diverged runs carry +inf means, so they never win and never turn the minimum into NaN; a cell
    where every lr diverged gets ``best_lr = NaN`` and ``all_diverged = True``.  ``lr_at_edge``
    flags a best lr on the border of the lr grid (the grid may be too narrow there).
    """
    keys = ["optimizer", *cell_cols]
    loss = runs[metric].to_numpy(dtype=float, copy=True)
    loss[np.isnan(loss)] = np.inf
    work = runs.assign(_loss=loss)
    groups = work.groupby(keys, sort=False, observed=True)
    idx = groups["_loss"].idxmin().to_numpy()
    lrs = groups["lr"].agg(["min", "max", "size"])  # same group order as idx
    all_div = ~np.isfinite(work["_loss"].loc[idx].to_numpy())
    best = runs.loc[idx].reset_index(drop=True).rename(columns={"lr": "best_lr"})
    best["best_lr"] = np.where(all_div, np.nan, best["best_lr"].to_numpy())
    best["all_diverged"] = all_div
    at_edge = (best["best_lr"].to_numpy() == lrs["min"].to_numpy()) | (best["best_lr"].to_numpy() == lrs["max"].to_numpy())
    best["lr_at_edge"] = (~all_div) & (lrs["size"].to_numpy() > 1) & at_edge
    return best


def winners(best: pd.DataFrame, optimizers, cell_cols, significance: float = 0.0) -> pd.DataFrame:
    """Winner of each cell among ``optimizers``, judged at each optimizer's best lr.

    The winner has the lowest ``final_loss_mean``.  Its margin over the runner-up is
    (runner-up mean - winner mean) / sqrt(sem_w^2 + sem_r^2) (Welch's combined standard error of the
    two replicate means).  A cell is *decided* when the margin exceeds ``significance``; otherwise
    it is undecided (not a tie: refine's "tied" claims equivalence within a margin; this only says
    the scan's replicates cannot tell).  ``significance=0`` keeps the raw argmin of the paper's
    figures (only an exact equality, or every optimizer diverged, is undecided).  Returns one row per cell (in the order
    of ``best``) with columns cell_cols + winner, runner_up, margin, decided, label.
    """
    optimizers = list(optimizers)
    sub = best[best["optimizer"].isin(optimizers)]
    mean = sub.pivot_table(index=list(cell_cols), columns="optimizer", values="final_loss_mean",
                           sort=False, dropna=False)[optimizers]
    sem = sub.pivot_table(index=list(cell_cols), columns="optimizer", values="final_loss_sem",
                          sort=False, dropna=False)[optimizers]
    m = mean.to_numpy(dtype=float, copy=True)
    m[np.isnan(m)] = np.inf
    s = sem.to_numpy(dtype=float, copy=True)
    order = np.argsort(m, axis=1, kind="stable")
    rows = np.arange(len(m))
    w, r = order[:, 0], order[:, 1] if len(optimizers) > 1 else order[:, 0]
    mw, mr = m[rows, w], m[rows, r]
    se = np.hypot(np.nan_to_num(s[rows, w], nan=0.0, posinf=0.0),
                  np.nan_to_num(s[rows, r], nan=0.0, posinf=0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = mr - mw  # inf when only the runner-up diverged; NaN when both did
        margin = np.where(gap > 0, gap / se, 0.0)
    margin = np.where(np.isnan(gap), 0.0, margin)
    if len(optimizers) == 1:
        margin = np.full(len(m), np.inf)
    decided = (margin > significance) & np.isfinite(mw)
    names = np.asarray(optimizers, dtype=object)
    out = mean.index.to_frame(index=False)
    out["winner"] = names[w]
    out["runner_up"] = names[r]
    out["margin"] = margin
    out["decided"] = decided
    out["label"] = np.where(decided, names[w], UNDECIDED)
    return out


def win_fractions(table: pd.DataFrame, optimizers) -> dict:
    """Fraction of cells won by each optimizer, and undecided."""
    n = max(len(table), 1)
    counts = table["label"].value_counts()
    return {name: float(counts.get(name, 0)) / n for name in [*optimizers, UNDECIDED]}
