"""refine's tables: a cell's rows in its work unit, and the three tables beside the scan that the
work units are finished into (BH over the map) -- decisions.parquet (a row per cell),
refine/lrs.parquet (a row per cell, optimizer and raced lr) and replicates.parquet (every fresh
replicate's final loss, so each decision can be recomputed).  Every table has its columns even
when it has no rows (a map where everything diverged), and a table that does not read is named
with the command that rebuilds it."""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..axes import CELL_NAMES
from ..errors import FocuslabError
from .procedure import CellResult, lead_interval, space_of
from .settings import SELECTION_EVERY, RefineParams, roles
from .statistics import bh_adjusted

REFINE = "refine"  # refine's own directory beside the scan: its lrs table, its work units, its lock
DECISIONS = "decisions.parquet"
REPLICATES = "replicates.parquet"
LRS = "lrs.parquet"
OUTCOMES = ("winner", "tied", "undecided", "diverged")

#: Columns and types of a unit's replicate and lr tables (so that a unit without rows has them too).
DATA_DTYPES = {"cell": np.int32, "optimizer": object, "lr": float, "replicate": np.int32, "selection": bool,
               "final_loss": float, "diverged": bool}
LR_DTYPES = {"cell": np.int64, "optimizer": object, "lr": float, "level": np.int64, "steps_beyond_grid": float,
             "joined_look": np.int64, "left_look": np.int64, "replicates": np.int64, "selected": bool,
             "diverged": bool, "selection_mean": float, "estimation_mean": float, "optimizer_state": object}


def outputs(directory: Path) -> list[Path]:
    """The three tables a complete refinement leaves beside the scan."""
    directory = Path(directory)
    return [directory / DECISIONS, directory / REPLICATES, directory / REFINE / LRS]


def rerun_command(directory, params: dict | RefineParams) -> str:
    """The ``focuslab refine`` command that resumes (or rebuilds) the refinement of ``directory`` made
    with ``params``: its settings that differ from the defaults, as flags."""
    from ..options import declared, flag

    given = params if isinstance(params, dict) else {f.name: getattr(params, f.name) for f in fields(params)}
    words = ["focuslab", "refine", str(directory)]
    for f in declared(RefineParams):
        value = given.get(f.name, f.default)
        if value != f.default:
            words += [flag(f), repr(float(value)) if isinstance(value, float) else str(value)]
    return shlex.join(words)


def read_decisions(directory: Path, record: dict):
    """decisions.parquet of a complete refinement (``record``: scan.json's "refine"); a table that
    does not read is one line that ends with the command that rebuilds it from the work units."""
    import pandas as pd

    path = Path(directory) / DECISIONS
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for truncated or foreign files
        why = "not found" if isinstance(err, FileNotFoundError) else "unreadable (corrupt or cut short)"
        raise FocuslabError(f"{path} is {why}; rebuild it from refine's work units with "
                            f"`{rerun_command(directory, record.get('params') or {})}`") from None


def _cell(value):
    """A setting's value as a table holds it: a number, else its text (focuslab.values)."""
    from ..values import format_value

    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else format_value(value)


def cell_rows(i: int, r: CellResult, lattice, replicate0: int, steps: int):
    """The three tables' rows for one cell: (cell row, lr rows, replicate frames); ``lattice``: one
    Lattice, or label -> candidate space (a tuned optimizer's candidates add their settings)."""
    import pandas as pd

    beyond, lr_rows, frames, refined = [], [], [], 0
    for o, arms in r.arms.items():
        for a in arms:
            if not len(a.y):
                continue  # joined the race after the cell's last look
            space = space_of(lattice, o)
            own = space.describe(a.u)
            settings = {k: _cell(v) for k, v in space.setting_values(a.u).items()}
            beyond.append(abs(own["steps_beyond_grid"]))
            refined += int(own["level"] > 0)
            sel, est = roles(len(a.y))
            lr_rows.append({"cell": i, "optimizer": o, "lr": a.lr, **settings, **own, "joined_look": a.added + 1,
                            "left_look": a.left + 1 if a.left >= 0 else 0, "replicates": len(a.y),
                            "selected": r.selected.get(o) == a.u, "diverged": a.diverged,
                            "selection_mean": float(a.y[sel].mean()), "estimation_mean": float(a.y[est].mean()),
                            "optimizer_state": r.state.get(o, "")})
            j = np.arange(len(a.y))
            frames.append(pd.DataFrame({"cell": np.int32(i), "optimizer": o, "lr": a.lr, **settings,
                                        "replicate": (replicate0 + j).astype(np.int32),
                                        "selection": j % SELECTION_EVERY == 0, "final_loss": a.y,
                                        "diverged": np.isinf(a.y)}))
    racing = bool(lr_rows)
    row = {"cell": i, "kind": r.kind, "p": r.p, "best": r.best, "tied": ",".join(r.tied), "leader": r.leader,
           "runner_up": r.runner_up, "lead": r.lead, "scale": r.scale, "look": r.look,
           "estimation": r.estimation if racing else 0, "fresh": r.fresh if racing else 0,
           "lr_extended": int(math.ceil(max(beyond, default=0.0))), "lr_refined": refined, "steps": steps,
           "contrasts": json.dumps(r.contrasts)}
    return row, lr_rows, frames


def _empty(dtypes: dict):
    import pandas as pd

    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in dtypes.items()})


def unit_tables(rows: list, lrs: list, frames: list) -> dict:
    """A work unit's tables ("": a row per cell, "lrs", "data") from its cells' rows."""
    import pandas as pd

    return {"": pd.DataFrame(rows), "lrs": pd.DataFrame(lrs) if lrs else _empty(LR_DTYPES),
            "data": pd.concat(frames, ignore_index=True) if frames else _empty(DATA_DTYPES)}


def latest_cells(work: Path, latest: dict):
    """Each cell's row from the unit that holds its latest result (``latest``: cell -> unit name)."""
    import pandas as pd

    from ..results import read_parquet
    from ..runner import unit_path

    frames = []
    for name in sorted(set(latest.values())):
        t = read_parquet(unit_path(work, name))
        frames.append(t[t["cell"].map(latest).eq(name)])
    return pd.concat(frames, ignore_index=True).sort_values("cell", kind="stable").reset_index(drop=True)


def _decisions(table, *, config, cells: np.ndarray, params: RefineParams):
    """BH over the cells' final p-values: decisions.parquet's rows, and what the record says of them."""
    import pandas as pd

    live = (table["kind"] != "diverged").to_numpy()
    q_values = np.full(len(table), math.nan)
    q_values[live] = bh_adjusted(table.loc[live, "p"].to_numpy())
    passed = live & (np.nan_to_num(q_values, nan=2.0) <= params.fdr)
    decided, m = int(passed.sum()), int(live.sum())
    alpha = params.fdr * max(decided, 1) / max(m, 1)
    weights = params.spending()
    families = max(1, len(config.optimizers) * (len(config.optimizers) - 1))
    rows = []
    for t, ok, qv in zip(table.itertuples(index=False), passed, q_values):
        c = int(t.cell)
        outcome = "diverged" if t.kind == "diverged" else (t.kind if ok else "undecided")
        row = {name: float(cells[c, j]) for j, name in enumerate(CELL_NAMES)}
        tied = sorted(t.tied.split(","), key=list(config.optimizers).index) if t.tied else []
        low, high = lead_interval(json.loads(t.contrasts), alpha, weights, families, t.scale)
        row.update(cell=c, outcome=outcome, winner=t.best if outcome == "winner" else "",
                   tied=",".join(tied) if outcome == "tied" else "", leader=t.leader, runner_up=t.runner_up,
                   lead=t.lead, lead_low=low, lead_high=high, margin=params.equivalence * t.scale, scale=t.scale,
                   p_value=t.p, q_value=float(qv), replicates=int(t.fresh), estimation_replicates=int(t.estimation),
                   looks=int(t.look) + 1 if t.fresh else 0, steps=int(t.steps), lr_extended=int(t.lr_extended),
                   lr_refined=int(t.lr_refined))
        rows.append(row)
    summary = {"decided": decided, "bh_threshold": params.fdr * decided / max(m, 1), "interval_level": 1 - alpha}
    return pd.DataFrame(rows), summary


def finish(directory: Path, *, config, cells: np.ndarray, work: Path, latest: dict, params: RefineParams,
           rounds: int) -> dict:
    """BH over the cells' final p-values; decisions.parquet, refine/lrs.parquet and
    replicates.parquet (written chunk by chunk: tens of millions of rows need not sit in memory)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..results import atomic_path, read_parquet, write_parquet
    from ..runner import unit_path

    decisions, summary = _decisions(latest_cells(work, latest), config=config, cells=cells, params=params)
    write_parquet(decisions, directory / DECISIONS)
    tuning = getattr(config, "tuning", None)
    tuned = list(tuning.columns) if tuning is not None else []  # the settings a tuned optimizer's candidates carry
    schema = pa.schema([("cell", pa.int32()), ("optimizer", pa.dictionary(pa.int8(), pa.string())),
                        ("lr", pa.float64()),
                        *[(name, pa.float64() if tuning.numeric(name) else pa.string()) for name in tuned],
                        ("replicate", pa.int32()), ("selection", pa.bool_()),
                        ("final_loss", pa.float64()), ("diverged", pa.bool_())])
    by_chunk: dict = {}
    for c, name in latest.items():
        by_chunk.setdefault(c // params.chunk_cells, {}).setdefault(name, []).append(c)
    lr_frames = []
    with atomic_path(directory / REPLICATES) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for k in sorted(by_chunk):
            data = []
            for name, mine in sorted(by_chunk[k].items()):
                d = read_parquet(unit_path(work, name, "data"))
                data.append(d[d["cell"].isin(mine)])
                t = read_parquet(unit_path(work, name, "lrs"))
                if len(t):  # a unit whose every cell diverged raced no lr
                    lr_frames.append(t[t["cell"].isin(mine)])
            data = pd.concat(data, ignore_index=True)
            for name in tuned:  # an untuned optimizer's rows in a tuned scan carry none of them
                if name not in data:
                    data[name] = np.nan if tuning.numeric(name) else None
            data = data.sort_values(["cell", "optimizer", "lr", *tuned, "replicate"], kind="stable")
            data = data[[f.name for f in schema]]
            if len(data):
                writer.write_table(pa.Table.from_pandas(data.astype({"optimizer": "category"}), schema=schema,
                                                        preserve_index=False))
    lrs = pd.concat(lr_frames, ignore_index=True) if lr_frames else _empty(LR_DTYPES)
    lrs = lrs.sort_values(["cell", "optimizer", "lr", *[t for t in tuned if t in lrs]], kind="stable")
    write_parquet(lrs.reset_index(drop=True), directory / REFINE / LRS)
    spent = sum(int(read_parquet(f)["steps"].sum()) for f in sorted(Path(work).glob("*.parquet"))
                if f.name.count(".") == 1)
    fractions = {o: float((decisions["outcome"] == o).mean()) for o in OUTCOMES}
    record = {"status": "complete", "fractions": fractions, "steps_spent": spent, **summary, "rounds": rounds}
    return {"fractions": fractions, "cells": config.n_cells, "record": record}
