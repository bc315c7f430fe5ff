"""Reductions of scan tables: best learning rate per (optimizer, cell)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .config import CELL_AXES


def best_per_cell(runs: pd.DataFrame, cell_cols=CELL_AXES) -> pd.DataFrame:
    """One row per (optimizer, cell): the lr with the lowest ``final_loss_mean``.

    Diverged runs carry +inf means, so they never win and never turn the minimum into NaN; a cell
    where every lr diverged gets ``best_lr = NaN`` and ``all_diverged = True``.  ``lr_at_edge``
    flags a best lr on the border of the lr grid (the grid may be too narrow there).
    """
    keys = ["optimizer", *cell_cols]
    loss = runs["final_loss_mean"].to_numpy(dtype=float, copy=True)
    loss[np.isnan(loss)] = np.inf
    work = runs.assign(_loss=loss, _pos=np.arange(len(runs)))
    groups = work.groupby(keys, sort=False, observed=True)
    idx = groups["_loss"].idxmin()
    best = runs.loc[idx.to_numpy()].reset_index(drop=True)
    lo = groups["lr"].transform("min").loc[idx.to_numpy()].to_numpy()
    hi = groups["lr"].transform("max").loc[idx.to_numpy()].to_numpy()
    n_lr = groups["lr"].transform("size").loc[idx.to_numpy()].to_numpy()
    all_div = ~np.isfinite(work["_loss"].loc[idx.to_numpy()].to_numpy())
    best = best.rename(columns={"lr": "best_lr"})
    best["best_lr"] = np.where(all_div, np.nan, best["best_lr"].to_numpy())
    best["all_diverged"] = all_div
    best["lr_at_edge"] = (~all_div) & (n_lr > 1) & ((best["best_lr"] == lo) | (best["best_lr"] == hi))
    return best
