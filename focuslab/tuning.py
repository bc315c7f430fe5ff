"""Each optimizer at its best settings, not only its best lr: search spaces, equal budgets, tuning
curves.

A *trial* is one point of an optimizer's search space: a learning rate and a value of each tuned
setting.  An optimizer that is not tuned has one trial per lr of the scan's lr axis (what every
scan did before tuning existed).  A tuned optimizer's *space* is its lr grid (the scan's, or its
own: ``--tune OPT.lr=GRID``) times a grid per tuned setting (``--tune OPT.SETTING=GRID``, or the
default space the built-in declares beside each setting's default, ``--tune OPT``).

**Equal budgets.**  With ``--budget N`` every tuned optimizer gets N trials drawn from its own
space by the same scrambled Sobol design (scipy.stats.qmc, seed ``--design-seed``): each design
point picks one value of each dimension (its coordinate, in equal slices of [0, 1)), and the first
N distinct points are the trials.  Without a budget the trials are the whole product.  Every tuned
optimizer also runs its own settings at every lr of its lr grid (the *defaults line*), which is
not part of the budget: the map "at defaults" and the gain from tuning come from it.

**The same noise.**  A trial of a cell sees the same noise as every other trial of that cell (the
streams depend on the cell and the replicate only), so a tuned scan is, row for row, the scan of
its trials listed as separate specs (tested).  Trials that share their settings run in one engine
call over their lrs.

**Tuning curves** (Sivaprasad et al. 2020, arXiv 1910.11758): for k = 1, 2, 4, ..., N the
expected best loss of an optimizer that tries k trials drawn at random (without replacement) from
its N design trials.  With the N trial means sorted, m_(1) <= ... <= m_(N), it is exact:
E_k = sum_i m_(i) C(N - i, k - 1) / C(N, k).  It is the scan's estimate (each m_(i) a mean over the
scan's replicates); its standard error treats the order of the trials as fixed,
sqrt(sum_i w_i^2 sem_(i)^2), and the best-of-k of noisy means is biased low by selection, more so
for larger k -- ``focuslab refine`` settles winners on fresh replicates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import FocuslabError
from .grids import parse_grid
from .values import format_value, parse_value

if TYPE_CHECKING:
    import pandas as pd

#: What the design is (recorded with every tuned scan).
DESIGN = "scrambled Sobol (scipy.stats.qmc.Sobol), first N distinct grid points"


@dataclass(frozen=True)
class Dim:
    """One dimension of a space: the learning rate or a setting, its values and how they were written."""

    name: str
    values: tuple
    spec: str
    numeric: bool = True
    log: bool = False

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Trial:
    """One point of a space: ``lr`` and ``settings`` ((name, value), ...) of the tuned settings.
    ``design``: one of the budget's trials (what tuned comparisons use); ``defaults``: the
    optimizer's own settings (the defaults line)."""

    lr: float
    settings: tuple = ()
    design: bool = True
    defaults: bool = True


@dataclass(frozen=True)
class Space:
    """A tuned optimizer's search space: its lr grid, the tuned settings' grids, and its own values
    of those settings (``base``: where the defaults line sits)."""

    label: str
    lr: Dim
    dims: tuple
    base: tuple  # ((name, value), ...)

    @property
    def size(self) -> int:
        return len(self.lr) * math.prod(len(d) for d in self.dims)

    def record(self) -> dict:
        return {"lr": {"spec": self.lr.spec, "values": list(self.lr.values)},
                **{d.name: {"spec": d.spec, "values": [_json(v) for v in d.values]} for d in self.dims},
                "base": {k: _json(v) for k, v in self.base}}


@dataclass(frozen=True)
class Tuning:
    """The tuning of a scan: spaces by optimizer label, the budget (None: whole products), the
    design's seed, and the trials each tuned optimizer gets."""

    spaces: dict
    budget: int | None
    seed: int
    trials: dict = field(default_factory=dict)

    @property
    def columns(self) -> tuple:
        """The tuned settings, in first-seen order: the tables' setting columns."""
        return tuple(dict.fromkeys(d.name for s in self.spaces.values() for d in s.dims))

    def numeric(self, name: str) -> bool:
        return all(d.numeric for s in self.spaces.values() for d in s.dims if d.name == name)

    def record(self) -> dict:
        """What a scan's config records (and its digest hashes): the spaces, the budget, the design
        and its seed, and the trials themselves (so a scipy that draws other points cannot resume
        a scan under the same digest)."""
        return {"design": DESIGN, "seed": self.seed, "budget": self.budget,
                "spaces": {label: s.record() for label, s in self.spaces.items()},
                "trials": {label: [[t.lr, {k: _json(v) for k, v in t.settings}, t.design, t.defaults]
                                   for t in ts] for label, ts in self.trials.items()}}


def _json(v):
    return list(v) if isinstance(v, tuple) else v


# --- parsing what the user wrote -------------------------------------------------------------------
def parse_tune(items, where: str = "--tune") -> dict:
    """``['focus', 'adam.beta1=0.8,0.9,0.99', 'lion:beta2=0.9.beta2=0.9,0.99']`` -> ``{'focus': {},
    'adam': {'beta1': '0.8,0.9,0.99'}, 'lion:beta2=0.9': {'beta2': '0.9,0.99'}}``.  The grid is
    after the last ``=`` (a grid never holds one) and the setting after the last dot before it; an
    item without a setting asks for the optimizer's default space."""
    out: dict = {}
    for item in items or ():
        text = str(item).strip()
        key, sep, grid = text.rpartition("=")
        opt, dot, name = key.rpartition(".") if sep else ("", "", "")
        if not sep or not dot or not name.isidentifier():
            opt, name, grid = text, "", ""
        if not opt.strip():
            raise FocuslabError(f"{where}: expected OPT or OPT.SETTING=GRID, got {text!r}")
        table = out.setdefault(opt.strip(), {})
        if name:
            if not grid.strip():
                raise FocuslabError(f"{where} {opt}.{name}: empty grid")
            table[name] = grid.strip()
    return out


def tune_tables(layer: dict | None, section: str = "scan") -> dict:
    """A config layer's ``[SECTION.tune.OPT]`` tables (an empty table: the default space)."""
    value = (layer or {}).get("tune")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise FocuslabError(f"[{section}.tune] must hold one table per optimizer, e.g. [{section}.tune.focus] "
                            "beta1 = \"0.8,0.9,0.99\" (an empty table: the optimizer's default space)")
    return value


def _match(key: str, entries, where: str):
    """The entries a --tune key names: the entry with that label, else every entry of the optimizer
    that spelling names (one, or the key is ambiguous)."""
    exact = [e for e in entries if e.label == key]
    if exact:
        return exact
    from .optimizers import identity_of

    try:
        ident = identity_of(key, where)
    except FocuslabError:
        ident = None
    found = [e for e in entries if ident is not None and e.name == ident]
    if not found:
        raise FocuslabError(f"{where}: {key} is not among the optimizers ({', '.join(e.label for e in entries)})")
    if len(found) > 1:
        raise FocuslabError(f"{where}: {key} names {len(found)} entries ({', '.join(e.label for e in found)}); "
                            "name one by its label")
    return found


def _dim(entry, name: str, spec, where: str) -> Dim:
    """One tuned setting's grid, each value checked as the optimizer would check it."""
    from .optimizers.spec import split_values

    text = ",".join(map(str, spec)) if isinstance(spec, (list, tuple)) else str(spec)
    if not text.strip():
        raise FocuslabError(f"{where}: empty grid")
    entry.tunable(name, where)
    try:
        grid = parse_grid(spec, "x")
        values, numeric, log = grid.values, True, grid.is_log
    except FocuslabError:
        values = tuple(parse_value(v, where) for v in split_values(text, where))
        numeric, log = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values), False
    if not values:
        raise FocuslabError(f"{where}: empty grid")
    if len(set(map(repr, values))) != len(values):
        raise FocuslabError(f"{where}: repeated values in {text!r}")
    for v in values:
        entry.with_settings({name: v}, where.rsplit(".", 1)[0]).validate(where)
    return Dim(name, tuple(values), text, numeric, log)


def _lr_dim(spec, where: str) -> Dim:
    grid = parse_grid(spec, "lr")
    for v in grid.values:
        if not (math.isfinite(v) and v > 0):
            raise FocuslabError(f"{where}: learning rates must be finite and > 0, got {v:g}")
    if len(set(grid.values)) != len(grid.values):
        raise FocuslabError(f"{where}: repeated values in {grid.spec!r}")
    return Dim("lr", tuple(sorted(grid.values)), grid.spec, True, grid.is_log)


def resolve(entries, tables: dict, lr_grid, budget, seed: int) -> Tuning | None:
    """The scan's tuning from the merged ``tune`` tables (key -> {setting: grid}), or None when
    nothing is tuned.  Every error names the flag and the reason in one line."""
    if not tables:
        if budget is not None:
            raise FocuslabError("--budget: nothing is tuned (give --tune OPT or --tune OPT.SETTING=GRID)")
        return None
    scan_lr = Dim("lr", tuple(lr_grid.values), lr_grid.spec, True, lr_grid.is_log)
    spaces: dict = {}
    for key, table in tables.items():
        for entry in _match(key, entries, f"--tune {key}"):
            table = dict(table or {})
            if not table:
                defaults = getattr(getattr(entry, "rule", None), "default_space", lambda: {})()
                if not defaults:
                    raise FocuslabError(f"--tune {key}: {entry.label} declares no default space; give its "
                                        "settings: --tune OPT.SETTING=GRID")
                table = defaults
            old = spaces.get(entry.label)
            dims = {d.name: d for d in old.dims} if old else {}
            lr = old.lr if old else scan_lr
            for name, spec in table.items():
                where = f"--tune {key}.{name}"
                if name == "lr":
                    lr = _lr_dim(spec, where)
                else:
                    dims[name] = _dim(entry, name, spec, where)
            base = tuple((name, entry.settings.get(name, entry.defaults.get(name))) for name in dims)
            spaces[entry.label] = Space(entry.label, lr, tuple(dims.values()), base)
    if budget is not None:
        if budget < 1:
            raise FocuslabError(f"--budget: must be >= 1, got {budget}")
        for s in spaces.values():
            if budget > s.size:
                raise FocuslabError(f"--budget {budget} is larger than {s.label}'s space ({s.size} points: "
                                    f"{' x '.join(str(len(d)) for d in (s.lr, *s.dims))}); lower --budget or widen "
                                    "its grids")
    trials = {label: draw(s, budget, seed) for label, s in spaces.items()}
    return Tuning(spaces, budget, seed, trials)


# --- the design ----------------------------------------------------------------------------------
def design_points(sizes: list[int], budget: int | None, seed: int) -> list[tuple]:
    """Index tuples into a product of dimensions of ``sizes``: the whole product (budget None), or
    the first ``budget`` distinct points of a scrambled Sobol sequence, each coordinate picking
    the value whose equal slice of [0, 1) it falls in."""
    import itertools

    total = math.prod(sizes)
    if budget is None or budget >= total:
        return list(itertools.product(*[range(n) for n in sizes]))
    from scipy.stats import qmc

    sobol = qmc.Sobol(d=len(sizes), scramble=True, seed=seed)
    seen: dict = {}
    n = 1 << max(5, math.ceil(math.log2(4 * budget)))
    drawn = 0
    while len(seen) < budget and drawn < (1 << 20):
        u = sobol.random(n)
        drawn += n
        idx = np.minimum((u * np.asarray(sizes)).astype(np.int64), np.asarray(sizes) - 1)
        for row in map(tuple, idx.tolist()):
            if row not in seen:
                seen[row] = None
                if len(seen) == budget:
                    break
    if len(seen) < budget:  # never seen in practice: fill from a seeded permutation of the product
        for flat in np.random.default_rng(seed).permutation(total):
            row = tuple(int(i) for i in np.unravel_index(int(flat), sizes))
            if row not in seen:
                seen[row] = None
                if len(seen) == budget:
                    break
    return list(seen)


def draw(space: Space, budget: int | None, seed: int) -> tuple:
    """The trials of a tuned optimizer: the design's points and the defaults line, ordered by
    settings then lr (trials that share settings run together)."""
    dims = [space.lr, *space.dims]
    points = {}
    for idx in design_points([len(d) for d in dims], budget, seed):
        lr = space.lr.values[idx[0]]
        settings = tuple((d.name, d.values[i]) for d, i in zip(space.dims, idx[1:]))
        points[(settings, lr)] = [True, False]
    for lr in space.lr.values:
        points.setdefault((space.base, lr), [False, False])[1] = True
    order = {d.name: {repr(v): i for i, v in enumerate(d.values)} for d in space.dims}

    def sort_key(item):
        (settings, lr), _ = item
        return (tuple(order[k].get(repr(v), -1) for k, v in settings), tuple(repr(v) for _, v in settings), lr)

    return tuple(Trial(lr, settings, design, defaults)
                 for (settings, lr), (design, defaults) in sorted(points.items(), key=sort_key))


def lr_trials(lrs) -> tuple:
    """The trials of an optimizer that is not tuned: each lr of the scan at its own settings."""
    return tuple(Trial(float(lr)) for lr in lrs)


def groups(trials) -> list[tuple[dict, list[int]]]:
    """Runs of consecutive trials that share their settings: (settings, positions)."""
    out: list = []
    for i, t in enumerate(trials):
        if out and out[-1][0] == t.settings:
            out[-1][1].append(i)
        else:
            out.append((t.settings, [i]))
    return [(dict(s), pos) for s, pos in out]


def setting_column(values, numeric: bool):
    """A tuned setting's column: floats where every value is a number, else the values as written."""
    if numeric:
        return np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)
    return np.asarray(["" if v is None else format_value(v) for v in values], dtype=object)


# --- tuning curves ---------------------------------------------------------------------------------
def curve_ks(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def expected_best(means: np.ndarray, sems: np.ndarray, k: int) -> tuple[float, float]:
    """(E[min of k of the trials drawn without replacement], its standard error with the trials'
    order held fixed), from the trials' means and standard errors (see the module docstring)."""
    order = np.argsort(means, kind="stable")
    m, s = means[order], sems[order]
    n = len(m)
    k = min(k, n)
    i = np.arange(1, n + 1)
    with np.errstate(over="ignore", invalid="ignore"):
        w = np.exp(_log_comb(n - i, k - 1) - _log_comb(n, k))
    w = np.where(n - i >= k - 1, w, 0.0)
    live = w > 0
    with np.errstate(invalid="ignore"):
        value = float(np.sum(w[live] * m[live]))
        se = float(math.sqrt(np.sum((w[live] * np.where(np.isfinite(s[live]), s[live], 0.0)) ** 2)))
    return value, se


def _log_comb(n, k):
    from scipy.special import gammaln

    n, k = np.asarray(n, dtype=float), np.asarray(k, dtype=float)
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


# --- the tables of a tuned scan ----------------------------------------------------------------------
def edges(runs, config) -> None:
    """Mark, in a best table, whether each optimizer's best trial sits at the edge of its own space:
    ``lr_at_edge`` (its lr grid's first or last value) and ``at_edge`` (every dimension whose best
    value is its grid's first or last: a space that may be too narrow there; not where that value
    is the setting's own limit, as gamma = 0)."""
    import pandas as pd

    at_edge = np.full(len(runs), "", dtype=object)
    lr_edge = np.zeros(len(runs), dtype=bool)
    for label in runs["optimizer"].unique():
        rows = np.flatnonzero((runs["optimizer"] == label).to_numpy())
        entry = config.entry(label)
        space = config.tuning.spaces.get(label) if config.tuning is not None else None
        lr = space.lr if space is not None else Dim("lr", tuple(config.axes["lr"].values), "")
        dims = [lr, *(space.dims if space is not None else ())]
        marks = []
        for d in dims:
            if len(d) < 2 or not d.numeric:
                continue
            col = runs["best_lr"] if d.name == "lr" else runs[d.name]
            v = col.to_numpy()[rows]
            lo, hi = min(d.values), max(d.values)
            ends = entry.limits(d.name) if d.name != "lr" else (None, None)
            hit = ((v == lo) & (lo != ends[0])) | ((v == hi) & (hi != ends[1]))
            if d.name == "lr":
                lr_edge[rows] = hit & ~runs["all_diverged"].to_numpy()[rows]
            marks.append(np.where(hit, d.name, ""))
        if marks:
            at_edge[rows] = [",".join(m for m in ms if m) for ms in zip(*marks)]
    runs["lr_at_edge"] = lr_edge
    runs["at_edge"] = pd.Series(at_edge, index=runs.index).where(~runs["all_diverged"], "")


def tuned_tables(runs, config) -> dict:
    """best.parquet (each optimizer at its best design trial: the comparison at the declared
    budget), best_defaults.parquet (each at its best lr at its own settings) and tuning.parquet
    (the tuning curves) from a tuned scan's runs table."""
    from .axes import CELL_NAMES
    from .phase import best_per_cell

    best = best_per_cell(runs[runs["design"]].reset_index(drop=True))
    best = best.rename(columns={"trial": "best_trial"})
    edges(best, config)
    defaults = best_per_cell(runs[runs["defaults"]].reset_index(drop=True)).rename(columns={"trial": "best_trial"})
    edges(defaults, config)
    return {"best": best, "best_defaults": defaults, "tuning": curves(runs, CELL_NAMES)}


def curves(runs, cell_cols) -> "pd.DataFrame":
    """The tuning curves: per (optimizer, cell) and k = 1, 2, 4, ..., N (the optimizer's design
    trials), the expected best mean final loss of k trials drawn at random and its standard error
    (see the module docstring); k beyond an optimizer's N repeats its best of N."""
    import pandas as pd

    design = runs[runs["design"]]
    ks = sorted({k for _, g in design.groupby("optimizer", sort=False) for k in curve_ks(g["trial"].nunique())})
    frames = []
    for label, g in design.groupby("optimizer", sort=False):
        g = g.sort_values(["trial"], kind="stable")
        wide = g.pivot_table(index=list(cell_cols), columns="trial", values="final_loss_mean", sort=False)
        sem = g.pivot_table(index=list(cell_cols), columns="trial", values="final_loss_sem", sort=False)
        m = wide.to_numpy(dtype=float)
        s = sem.reindex(index=wide.index, columns=wide.columns).to_numpy(dtype=float)
        m = np.where(np.isnan(m), np.inf, m)
        order = np.argsort(m, axis=1, kind="stable")
        m = np.take_along_axis(m, order, 1)
        s = np.take_along_axis(s, order, 1)
        s = np.where(np.isfinite(s), s, 0.0)
        n = m.shape[1]
        i = np.arange(1, n + 1)
        cells = wide.index.to_frame(index=False)
        for k in ks:
            kk = min(k, n)
            w = np.where(n - i >= kk - 1, np.exp(_log_comb(np.maximum(n - i, 0), kk - 1) - _log_comb(n, kk)), 0.0)
            live = w > 0
            with np.errstate(invalid="ignore"):
                value = (m[:, live] * w[live]).sum(axis=1)
                se = np.sqrt(((s[:, live] * w[live]) ** 2).sum(axis=1))
            frames.append(cells.assign(optimizer=label, k=k, trials=n, expected_best=value, expected_best_se=se))
    out = pd.concat(frames, ignore_index=True)
    return out[["optimizer", *cell_cols, "k", "trials", "expected_best", "expected_best_se"]]
