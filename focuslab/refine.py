"""Decisive phase maps: settle every cell of a scan, or show that it is a practical tie.

``focuslab refine RESULTS_DIR`` turns a finished scan into one decision per cell -- ``winner``,
``tied`` (within a margin), ``undecided`` or ``diverged`` -- by spending fresh replicates only
where the decision is open.  The procedure, recorded in scan.json under "refine":

1. **Selection on the scan's replicates, estimation on fresh ones (no winner's curse).**  Each
   optimizer's learning rate is the one with the lowest mean final loss over the scan's own
   replicates 0..R0-1.  Its loss is then estimated on new replicates R0, R0+1, ... (new
   counter-based streams) that played no part in the choice, so the estimate is not biased low
   the way a minimum over noisy means is.  A best lr on the border of the grid is first moved
   outward, one grid step at a time, on the selection replicates, until it is interior or
   ``extend_steps`` steps or the lr bounds are reached (``lr_extended``: the steps added).
2. **Paired comparisons.**  All optimizers of a cell share its replicate streams (common random
   numbers), so two optimizers are compared through per-replicate differences d_i = y_a,i - y_b,i
   and a paired t statistic.
3. **Claims from simultaneous one-sided bounds, looked at in stages.**  Estimation replicates come
   in looks of n0, 2 n0, 4 n0, ... up to ``max_replicates`` (L looks planned).  A claim is
   "a wins" (a < b for every other b) or "tied within eps" (|best - b| < eps |L*| for each tied b,
   every other optimizer worse than the best), with L* the selection mean of the cell's best
   optimizer (fixed before any estimation replicate).  Its p-value is the largest one-sided
   p-value among the statements it needs, times 4 P L (P pairs of optimizers, the four one-sided
   statements a pair can enter, L planned looks): a union bound, so the p-value stays valid
   whichever look the cell stops at and whichever claim its data suggested.  A cell stops
   refining once its p-value is below fdr / 4, and otherwise goes on to the next look.
   An optimizer that diverges in any estimation replicate at its chosen lr counts as worse than
   every optimizer that does not; a cell where every optimizer diverges is ``diverged``.
4. **False discovery rate over the map.**  Benjamini-Hochberg at level ``fdr`` over the cells'
   p-values (scipy.stats.false_discovery_control): a cell whose claim passes is a winner or tied,
   the others are undecided.  ``difference``/``ci_low``/``ci_high`` are best minus runner-up with
   the simultaneous interval at the same level (each side fdr / (4 P L)).

Outputs beside the scan: ``decisions.parquet`` (one row per cell), ``replicates.parquet`` (every
estimation replicate's final loss at the chosen lrs, so each decision can be recomputed) and the
work units in ``refine/units``, one per (cell chunk, look), resumable and shardable like a scan.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .axes import CELL_NAMES
from .config import config_digest
from .errors import FocuslabError
from .results import read_json, read_parquet, write_json, write_parquet

REFINE = "refine"
DECISIONS = "decisions.parquet"
REPLICATES = "replicates.parquet"
OUTCOMES = ("winner", "tied", "undecided", "diverged")
#: Version of what the work units hold and how decisions are made; part of the digest, so units
#: written by another version are never mixed into a refinement.
PROCEDURE = 2


@dataclass(frozen=True)
class RefineParams:
    fdr: float = 0.05  # Benjamini-Hochberg level over the map's cells
    equivalence: float = 0.01  # tie margin, relative to |best loss|
    initial: int = 0  # estimation replicates of the first look (0: the scan's replicates, >= 20)
    max_replicates: int = 0  # estimation replicates at most (0: 32 x initial)
    extend_steps: int = 8  # lr grid steps added at most beyond an edge
    lr_min: float = 1e-7
    lr_max: float = 10.0
    chunk_cells: int = 100  # cells per work unit

    def validate(self) -> "RefineParams":
        if not 0 < self.fdr < 1:
            raise FocuslabError(f"--fdr: must be in (0, 1), got {self.fdr:g}")
        if not 0 <= self.equivalence < 1:
            raise FocuslabError(f"--equivalence: must be in [0, 1), got {self.equivalence:g}")
        return self

    def resolved(self, scan_replicates: int) -> "RefineParams":
        self.validate()
        initial = self.initial or max(20, scan_replicates)
        top = self.max_replicates or 32 * initial
        if initial < 2:
            raise FocuslabError(f"--initial-replicates: must be >= 2, got {initial}")
        if top < initial:
            raise FocuslabError(f"--max-replicates {top} is below the first look's {initial} replicates")
        return RefineParams(self.fdr, self.equivalence, initial, top, self.extend_steps, self.lr_min,
                            self.lr_max, self.chunk_cells)

    def looks(self) -> list[int]:
        """Cumulative estimation replicates at each look: n0, 2 n0, 4 n0, ..., max."""
        out, n = [], self.initial
        while n < self.max_replicates:
            out.append(n)
            n *= 2
        return out + [self.max_replicates]


# --- the statistics: pure functions over replicate losses -------------------------------------
def _one_sided(d: np.ndarray, bound: float, below: bool) -> float:
    """p-value of "mean(d) < bound" (below) or "mean(d) > bound", paired t with n-1 df."""
    from scipy.special import stdtr  # Student t CDF

    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.inf
    if sd == 0.0:
        return 0.0 if (mean < bound if below else mean > bound) else 1.0
    t = (mean - bound) / (sd / math.sqrt(n))
    return float(stdtr(n - 1, t) if below else stdtr(n - 1, -t))


@dataclass(frozen=True)
class Claim:
    kind: str  # winner, tied, diverged
    p: float  # Bonferroni-adjusted (4 P L), valid under optional stopping over the planned looks
    best: str
    tied: tuple  # the tie's members, best first (empty for a winner)
    runner_up: str
    difference: float  # best minus runner-up
    ci_low: float
    ci_high: float


def cell_claim(losses: dict, scale: float, eps: float, looks: int, alpha: float = 0.05) -> Claim:
    """The best-supported claim about one cell from its estimation replicates.

    ``losses``: optimizer -> per-replicate final losses (equal length, +inf = diverged), ordered by
    replicate; ``scale``: |L*| for the tie margin eps * scale; ``looks``: L planned looks;
    ``alpha``: the level of the reported interval.  Returns the claim with the smaller adjusted
    p-value of "the best wins" and "the best and those within the margin are tied".
    """
    from scipy.special import stdtrit  # Student t quantile

    names = list(losses)
    finite = [o for o in names if np.all(np.isfinite(losses[o]))]
    if not finite:
        return Claim("diverged", 0.0, "", (), "", math.nan, math.nan, math.nan)
    failed = [o for o in names if o not in finite]
    order = sorted(finite, key=lambda o: float(np.mean(losses[o])))
    best = order[0]
    pairs = max(1, len(names) * (len(names) - 1) // 2)
    factor = 4 * pairs * looks
    delta = eps * scale
    worse_p = {o: _one_sided(losses[best] - losses[o], 0.0, True) for o in order[1:]}
    tie_p = {o: max(_one_sided(losses[best] - losses[o], -delta, False),
                    _one_sided(losses[best] - losses[o], delta, True)) if delta > 0 else 1.0 for o in order[1:]}
    for o in failed:  # diverging at its chosen lr: certainly worse, never tied
        worse_p[o], tie_p[o] = 0.0, 1.0
    win = max(worse_p.values(), default=0.0)
    near = [o for o in order[1:] if abs(float(np.mean(losses[best] - losses[o]))) < delta]
    tie = max([tie_p[o] for o in near] + [worse_p[o] for o in names if o != best and o not in near], default=0.0)
    runner = order[1] if len(order) > 1 else (failed[0] if failed else "")
    if runner and runner in finite:
        d = losses[best] - losses[runner]
        n = len(d)
        mean = float(d.mean())
        half = (stdtrit(n - 1, 1 - alpha / factor) * float(d.std(ddof=1)) / math.sqrt(n)) if n > 1 else math.inf
        diff, lo, hi = mean, mean - half, mean + half
    else:
        diff = lo = hi = -math.inf if runner else math.nan
    if near and tie < win:
        return Claim("tied", min(1.0, factor * tie), best, (best, *near), runner, diff, lo, hi)
    return Claim("winner", min(1.0, factor * win), best, (), runner, diff, lo, hi)


def fdr_reject(p_values, q: float) -> np.ndarray:
    """Benjamini-Hochberg at level q: which p-values are discoveries."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, dtype=float)
    if not len(p):
        return np.zeros(0, dtype=bool)
    return false_discovery_control(p, method="bh") <= q


# --- selection on the scan's replicates ---------------------------------------------------------
def _grid_step(lrs: np.ndarray, side: int) -> float:
    """The multiplicative step of the lr grid at one end (side -1: low, +1: high)."""
    if len(lrs) < 2:
        return 1.0
    return lrs[1] / lrs[0] if side < 0 else lrs[-1] / lrs[-2]


def select(config, runs: pd.DataFrame, cells: np.ndarray, index: list[int], params: RefineParams) -> pd.DataFrame:
    """Each optimizer's lr per cell from the scan's replicates (``runs`` with a ``cell`` column),
    moved outward past a grid edge when the best lr sits on it, by running the kernel on the same
    selection replicates."""
    from .toy.kernel import run
    from .toy.rng import trajectory_keys

    lrs = np.asarray(config.axes["lr"].values)
    means = runs.set_index(["optimizer", "cell", "lr"])["final_loss_mean"]
    rows = []
    sel_reps = np.arange(config.replicates)
    for i in index:
        for label in config.optimizers:
            entry = config.entry(label)
            m = np.array([means.get((label, i, lr), np.inf) for lr in lrs], dtype=float)
            m[np.isnan(m)] = np.inf
            j = int(np.argmin(m))
            lr, mean, steps = float(lrs[j]), float(m[j]), 0
            edge = bool(np.isfinite(mean) and len(lrs) > 1 and j in (0, len(lrs) - 1))
            if edge:
                side = -1 if j == 0 else 1
                factor = _grid_step(lrs, side)
                keys = trajectory_keys(config.seed, cells[i:i + 1], sel_reps)
                while abs(steps) < params.extend_steps:
                    nxt = lr * factor
                    if not params.lr_min <= nxt <= params.lr_max:
                        break
                    out = run(entry.name, entry.settings, cells[i:i + 1], np.array([nxt]), keys, config.steps)
                    y = np.where(out["diverged"][0, 0] == 1, np.inf, out["final_loss"][0, 0])
                    if not float(np.mean(y)) < mean:
                        break
                    lr, mean, steps = nxt, float(np.mean(y)), steps + side
            rows.append({"cell": i, "optimizer": label, "lr": lr, "selection_mean": mean,
                         "lr_extended": steps, "lr_edge_checked": edge, "excluded": not np.isfinite(mean)})
    return pd.DataFrame(rows)


# --- work units ---------------------------------------------------------------------------------
def _unit_name(chunk: int, look: int) -> str:
    return f"c{chunk:05d}-k{look}"


def compute_unit(config, params: RefineParams, cells: np.ndarray, index: list[int], look: int,
                 selection: pd.DataFrame | None, runs: pd.DataFrame | None) -> dict:
    """Worker body: for the open ``index`` cells of a chunk, the estimation replicates of ``look``
    at each optimizer's chosen lr (look 0 first makes the chunk's selection)."""
    from .toy.kernel import run
    from .toy.rng import trajectory_keys

    tables = {}
    if selection is None:
        selection = select(config, runs, cells, index, params)
        tables["selection"] = selection
    looks = params.looks()
    lo = config.replicates + (looks[look - 1] if look else 0)
    reps = np.arange(lo, config.replicates + looks[look])
    sel = selection[selection["cell"].isin(index) & ~selection["excluded"]]
    rows = []
    for (label, lr), group in sel.groupby(["optimizer", "lr"], sort=True):
        entry = config.entry(label)
        idx = group["cell"].to_numpy()
        out = run(entry.name, entry.settings, cells[idx], np.array([lr]), trajectory_keys(config.seed, cells[idx], reps),
                  config.steps)
        div = out["diverged"][:, 0, :].astype(bool)
        loss = np.where(div, np.inf, out["final_loss"][:, 0, :])
        n = len(reps)
        rows.append(pd.DataFrame({"cell": np.repeat(idx, n).astype(np.int32), "optimizer": label, "lr": lr,
                                  "replicate": np.tile(reps, len(idx)).astype(np.int32),
                                  "final_loss": loss.reshape(-1), "diverged": div.reshape(-1)}))
    tables[""] = (pd.concat(rows, ignore_index=True) if rows else
                  pd.DataFrame({"cell": pd.Series(dtype=np.int32), "optimizer": pd.Series(dtype=object),
                                "lr": pd.Series(dtype=float), "replicate": pd.Series(dtype=np.int32),
                                "final_loss": pd.Series(dtype=float), "diverged": pd.Series(dtype=bool)}))
    return tables


def _state(data: pd.DataFrame, selection: pd.DataFrame, cells: list[int], optimizers, params: RefineParams) -> dict:
    """Each cell's best claim from its estimation replicates so far.  An optimizer whose every lr
    diverged in the scan takes no estimation replicates and counts as diverged in all of them."""
    looks = len(params.looks())
    d = data.sort_values(["cell", "optimizer", "replicate"], kind="stable")
    cell_of = d["cell"].to_numpy()
    opt_of = d["optimizer"].to_numpy()
    loss_of = d["final_loss"].to_numpy()
    excluded = {(c, o): e for c, o, e in zip(selection["cell"], selection["optimizer"], selection["excluded"])}
    sel_mean = {(c, o): m for c, o, m in zip(selection["cell"], selection["optimizer"], selection["selection_mean"])}
    out = {}
    for c in cells:
        kept = [o for o in optimizers if not excluded[(c, o)]]
        lo, hi = np.searchsorted(cell_of, c, "left"), np.searchsorted(cell_of, c, "right")
        if not kept or lo == hi:
            out[c] = Claim("diverged", 0.0, "", (), "", math.nan, math.nan, math.nan)
            continue
        names, values = opt_of[lo:hi], loss_of[lo:hi]
        by_opt = {o: values[names == o] for o in kept}
        n = len(by_opt[kept[0]])
        losses = {o: by_opt[o] if o in kept else np.full(n, np.inf) for o in optimizers}
        scale = abs(min(float(sel_mean[(c, o)]) for o in kept))
        out[c] = cell_claim(losses, scale, params.equivalence, looks, params.fdr)
    return out


def _open(claims: dict, params: RefineParams) -> list[int]:
    return sorted(c for c, cl in claims.items() if cl.kind != "diverged" and cl.p > params.fdr / 4)


def refine_digest(scan_digest: str, params: RefineParams) -> str:
    return config_digest({"scan": scan_digest, "refine": asdict(params), "procedure": PROCEDURE})


def run_refine(directory: Path, params: RefineParams, jobs: int | None = None, progress: bool = True,
               shard: tuple[int, int] | None = None, force: bool = False, log=None) -> dict:
    """Refine the scan in ``directory`` (see the module docstring); resumable, shardable."""
    import os
    import shutil

    from .results import load_scan
    from .runner import Progress, Unit, pending, run_units, unit_path
    from .scan import cell_values, config_from_meta

    log = log or (lambda msg: print(msg, file=sys.stderr))
    directory = Path(directory)
    meta, runs, _ = load_scan(directory)
    config = config_from_meta(meta)
    params = params.resolved(config.replicates)
    digest = refine_digest(meta["digest"], params)
    work = directory / REFINE / "units"
    record = meta.get("refine")
    if record and record.get("digest") != digest:
        if not force:
            raise FocuslabError(f"{directory} was refined with other settings (digest {record.get('digest')} vs "
                                f"{digest}); use --force to start the refinement over")
        shutil.rmtree(directory / REFINE, ignore_errors=True)
        for name in (DECISIONS, REPLICATES):
            (directory / name).unlink(missing_ok=True)
        record = None
    if (record and shard is None and record.get("status") == "complete" and (directory / DECISIONS).exists()
            and (directory / REPLICATES).exists()):
        return {"already_complete": True, "fractions": record.get("fractions", {}), "looks": params.looks()}
    work.mkdir(parents=True, exist_ok=True)
    if not record:
        record = {"digest": digest, "params": asdict(params), "status": "running", "version": __version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "procedure": __doc__.split("\n\n", 1)[1].strip(),
                  "attempts": []}
        meta["refine"] = record
        write_json(meta, directory / "scan.json")
    cells = cell_values(config)
    cell_index = pd.DataFrame(cells, columns=list(CELL_NAMES)).assign(cell=np.arange(config.n_cells))
    runs = runs.merge(cell_index, on=list(CELL_NAMES), how="inner")[["optimizer", "cell", "lr", "final_loss_mean"]]
    chunks = [list(range(s, min(s + params.chunk_cells, config.n_cells)))
              for s in range(0, config.n_cells, params.chunk_cells)]
    mine = [k for k in range(len(chunks)) if shard is None or k % shard[1] == shard[0] - 1]
    looks = params.looks()
    jobs = jobs or os.cpu_count() or 1
    started = time.time()
    steps_done = 0
    per_rep = len(config.optimizers) * config.steps
    data = {k: None for k in mine}  # a chunk's fresh replicates so far
    selection = {}
    open_cells = {k: chunks[k] for k in mine}
    claims, used = {}, {}  # each cell's claim and fresh replicates at its last look
    for look in range(len(looks)):
        units = []
        for k in mine:
            if not open_cells[k]:
                continue
            new = looks[look] - (looks[look - 1] if look else 0)
            units.append(Unit(_unit_name(k, look), len(open_cells[k]) * new * per_rep,
                              (config, params, cells, open_cells[k], look, selection.get(k),
                               runs[runs["cell"].isin(chunks[k])] if look == 0 else None),
                              sides=("selection",) if look == 0 else ()))
        todo = pending(work, units, log)
        bar = Progress(sum(u.cost for u in todo), "steps", f"refine {directory} look {look + 1}/{len(looks)} "
                       f"({looks[look]} replicates)", enabled=progress, unit_total=len(todo), unit_name="chunks")
        run_units(work, todo, compute_unit, jobs=jobs, progress=bar)
        bar.close()
        steps_done += sum(u.cost for u in todo)
        for u in units:
            k = int(u.name[1:6])
            if look == 0:
                selection[k] = read_parquet(unit_path(work, u.name, "selection"))
            new = read_parquet(unit_path(work, u.name))
            data[k] = new if data[k] is None else pd.concat([data[k], new], ignore_index=True)
            now = _state(data[k], selection[k], open_cells[k], config.optimizers, params)
            claims.update(now)
            used.update({c: looks[look] for c in now if now[c].kind != "diverged"})
            open_cells[k] = _open(now, params)
    meta = read_json(directory / "scan.json")
    summary = {} if shard is not None else _finish(directory, meta, config, cells, selection, data, claims, used,
                                                     params)
    attempt = {"wall_seconds": round(time.time() - started, 3), "steps_computed": steps_done,
               "shard": list(shard) if shard else None, "jobs": jobs}
    meta["refine"].setdefault("attempts", []).append(attempt)
    write_json(meta, directory / "scan.json")
    return {**attempt, **summary, "looks": looks}


def _finish(directory, meta, config, cells, selection, data, claims, used, params) -> dict:
    """Benjamini-Hochberg over the cells' final claims; decisions.parquet, and replicates.parquet
    written chunk by chunk (tens of millions of rows need not sit in memory at once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .results import atomic_path

    sel = pd.concat([selection[k] for k in sorted(selection)], ignore_index=True)
    live = [c for c in range(config.n_cells) if claims[c].kind != "diverged"]
    passed = dict(zip(live, fdr_reject([claims[c].p for c in live], params.fdr)))
    ext = sel.assign(steps=sel["lr_extended"].abs()).groupby("cell")["steps"].max()
    checked = sel.groupby("cell")["lr_edge_checked"].any()
    rows = []
    for c in range(config.n_cells):
        cl = claims[c]
        outcome = cl.kind if cl.kind == "diverged" else (cl.kind if passed[c] else "undecided")
        row = {name: float(cells[c, j]) for j, name in enumerate(CELL_NAMES)}
        tied = sorted(cl.tied, key=list(config.optimizers).index)  # one name per tie, whichever led
        row.update(cell=c, outcome=outcome, winner=cl.best if outcome == "winner" else "",
                   tied=",".join(tied) if outcome == "tied" else "", best=cl.best, runner_up=cl.runner_up,
                   difference=cl.difference, ci_low=cl.ci_low, ci_high=cl.ci_high, p_value=cl.p,
                   replicates=int(used.get(c, 0)), lr_extended=int(ext.get(c, 0)),
                   lr_edge_checked=bool(checked.get(c, False)))
        rows.append(row)
    decisions = pd.DataFrame(rows)
    write_parquet(decisions, directory / DECISIONS)
    schema = pa.schema([("cell", pa.int32()), ("optimizer", pa.dictionary(pa.int8(), pa.string())),
                        ("lr", pa.float64()), ("replicate", pa.int32()), ("final_loss", pa.float64()),
                        ("diverged", pa.bool_())])
    with atomic_path(directory / REPLICATES) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for k in sorted(data):
            if data[k] is not None and len(data[k]):
                chunk = data[k].sort_values(["cell", "optimizer", "replicate"], kind="stable")
                writer.write_table(pa.Table.from_pandas(chunk.astype({"optimizer": "category"}), schema=schema,
                                                        preserve_index=False))
    write_parquet(sel, directory / REFINE / "selection.parquet")
    fractions = {o: float((decisions["outcome"] == o).mean()) for o in OUTCOMES}
    meta["refine"].update(status="complete", fractions=fractions,
                          replicates_total=int(decisions["replicates"].sum()))
    return {"fractions": fractions, "cells": config.n_cells}
