"""The run: work units (a chunk of cells per pass, resumable and shardable like a scan's, with
bit-identical results), the lock that lets shards share a results directory, and ``run_refine``,
which starts from the plan (focuslab.refine.plan: one validation path for the run and its dry run),
computes the missing units, continues the cells that stopped early but fail BH, and finishes the
tables (focuslab.refine.tables)."""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .lattice import candidate_spaces
from .plan import RefinePlan, cannot_write, new_record, plan_refine, standing, unit_name
from .procedure import refine_cell, reopen
from .samplers import SimulatorSampler
from .settings import RefineParams, RefineRun
from .tables import REFINE, cell_rows, finish, latest_cells, outputs, unit_tables


@contextlib.contextmanager
def _locked(directory: Path, params: RefineParams | None = None):
    """An exclusive lock on the refinement of ``directory``: concurrent shards read and write
    scan.json one at a time.  A directory refine cannot write to is one line (plan.cannot_write)."""
    import fcntl

    path = Path(directory) / REFINE / ".lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a")
    except OSError as err:
        raise cannot_write(Path(directory), params or RefineParams(), err) from None
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class ChunkJob:
    """One work unit's inputs (it travels to a worker process)."""

    config: object  # the scan's ScanConfig
    params: RefineParams
    cells: list  # the cells' indices ...
    coords: np.ndarray  # ... and coordinates (cells, 5)
    targets: list  # the p-value at which each cell stops
    means: dict  # the scan's means, label -> (cells, candidates) ...
    sems: dict  # ... and standard errors (plan.screen_arrays)
    plugins: dict | None = None  # how the scan ran each external optimizer on the toy


def compute_chunk(job: ChunkJob) -> dict:
    """Worker body: the procedure for the job's cells; returns the tables of a work unit ("" cells,
    "lrs", "data")."""
    spaces = candidate_spaces(job.config, job.params)
    optimizers = list(job.config.optimizers)
    rows, lrs, frames = [], [], []
    for n, (i, xy, target) in enumerate(zip(job.cells, job.coords, job.targets)):
        sampler = SimulatorSampler(job.config, xy, job.plugins)
        screens = {o: (job.means[o][n], job.sems[o][n]) for o in optimizers}
        r = refine_cell(sampler, screens, job.params, spaces, target, optimizers)
        row, lr_rows, fr = cell_rows(i, r, spaces, job.config.replicates, sampler.steps)
        rows.append(row)
        lrs.extend(lr_rows)
        frames.extend(fr)
    return unit_tables(rows, lrs, frames)


def run_refine(directory: Path, params: RefineParams, *, run: RefineRun = RefineRun(), jobs: int | None = None,
               progress: bool = True, log=None, announce=None) -> dict:
    """Refine the scan in ``directory`` (see focuslab.refine); resumable and shardable (``run``:
    --shard, --force).  The plan's checks come first (plan_refine, as the dry run makes them);
    ``announce(line)`` then hears the plan in one line, before anything is written."""
    import shutil

    from ..results import META, read_json, write_json

    log = log or (lambda msg: print(msg, file=sys.stderr))
    plan = plan_refine(directory, params, run, jobs=jobs)
    directory, params, shard = plan.directory, plan.params, plan.shard
    if plan.complete and shard is None:
        return {"already_complete": True, "fractions": plan.standing.record.get("fractions", {}),
                "looks": params.looks()}
    if announce is not None:
        announce(plan_line(plan))
    work = directory / REFINE / "units"
    with _locked(directory, params):
        meta = read_json(directory / META)
        found = standing(directory, meta, params, plan.digest, run.force)  # again: another shard may have moved on
        if found.replace:
            shutil.rmtree(work, ignore_errors=True)
            for path in outputs(directory):
                path.unlink(missing_ok=True)
        if found.complete and shard is None:
            return {"already_complete": True, "fractions": found.record.get("fractions", {}), "looks": params.looks()}
        if found.unreadable and shard is None:
            log(f"{directory}: {', '.join(found.unreadable)} missing or unreadable (corrupt or cut short); "
                f"rebuilding refine's tables from the work units in {work}")
        work.mkdir(parents=True, exist_ok=True)
        if not found.record:
            meta["refine"] = new_record(plan.digest, params)
            write_json(meta, directory / META)
    attempt, summary = _compute(plan, work, log, progress)
    with _locked(directory, params):
        meta = read_json(directory / META)
        meta["refine"].setdefault("attempts", []).append(attempt)
        if summary:
            meta["refine"].update(summary["record"])
        write_json(meta, directory / META)
    summary.pop("record", None)
    return {**attempt, **summary, "looks": params.looks()}


def _compute(plan: RefinePlan, work: Path, log, progress: bool) -> tuple[dict, dict]:
    """The work units of every pass (the first over the run's chunks; then, in a run without
    --shard, the cells that stopped early but fail BH, until none is left) and the finished tables."""
    from ..results import read_parquet
    from ..runner import Progress, Unit, pending, run_units, unit_path

    config, params, chunks = plan.config, plan.params, plan.chunks
    started = time.time()
    computed = {"steps": 0, "units": 0}

    def run_round(rnd: int, todo_plan: dict) -> dict:
        """todo_plan: chunk -> (cells, targets); returns chunk -> unit name."""
        units = []
        for k, (index, targets) in sorted(todo_plan.items()):
            job = ChunkJob(config=config, params=params, cells=index, coords=plan.cells[index], targets=targets,
                           means={o: m[index] for o, m in plan.means.items()},
                           sems={o: s[index] for o, s in plan.sems.items()}, plugins=plan.plugins)
            units.append(Unit(unit_name(k, rnd, index, targets), len(index), (job,), sides=("lrs", "data")))
        todo = pending(work, units, log)
        label = "refine" if rnd == 0 else f"refine (continuing cells that stopped early but failed BH, round {rnd})"
        bar = Progress(sum(u.cost for u in todo), "cells", f"{label} {plan.directory}", enabled=progress,
                       unit_total=len(todo), unit_name="chunks")
        run_units(work, todo, compute_chunk, jobs=plan.jobs, progress=bar)
        bar.close()
        for u in todo:
            computed["steps"] += int(read_parquet(unit_path(work, u.name))["steps"].sum())
            computed["units"] += 1
        return {k: u.name for k, u in zip(sorted(todo_plan), units)}

    latest = {}  # cell -> the unit holding its latest result
    names = run_round(0, {k: (chunks[k], [params.fdr] * len(chunks[k])) for k in plan.mine})
    for k, name in names.items():
        latest.update({c: name for c in chunks[k]})
    summary = {}
    if plan.shard is None:
        rnd = 0
        while True:
            threshold, again = reopen(latest_cells(work, latest), params)
            if not again:
                break
            rnd += 1
            todo_plan: dict = {}
            for c in again:
                index, targets = todo_plan.setdefault(c // params.chunk_cells, ([], []))
                index.append(c)
                targets.append(threshold)
            names = run_round(rnd, todo_plan)
            for k, name in names.items():
                latest.update({c: name for c in todo_plan[k][0]})
        summary = finish(plan.directory, config=config, cells=plan.cells, work=work, latest=latest, params=params,
                         rounds=rnd)
    attempt = {"wall_seconds": round(time.time() - started, 3), "steps_computed": computed["steps"],
               "units_computed": computed["units"], "shard": list(plan.shard) if plan.shard else None,
               "jobs": plan.jobs}
    return attempt, summary


def plan_line(plan: RefinePlan) -> str:
    """The plan in one line, said before the run starts."""
    from ..runner import _amount, _duration

    w = plan.work
    return (f"focuslab refine: refining the scan in {plan.directory} ({plan.config.n_cells} cells x "
            f"{len(plan.config.optimizers)} optimizers; {_amount(w.steps_least)} to {_amount(w.steps_most)} optimizer "
            f"steps still to do, ~{_duration(w.seconds_least)} to ~{_duration(w.seconds_most)} on {w.workers} "
            "worker(s); `--dry-run` shows the plan)")


def summary_line(directory: Path, info: dict) -> str:
    """What a finished ``focuslab refine`` says."""
    if info.get("already_complete"):
        return f"{directory}: already refined with these settings; nothing to do (`focuslab plot {directory}`)"
    if info.get("shard"):
        k, n = info["shard"]
        return (f"{directory}: shard {k}/{n} refined ({info['steps_computed']:.3g} steps in "
                f"{info['wall_seconds']:.1f} s); run `focuslab refine {directory}` once all shards are done")
    f = info["fractions"]
    return (f"{directory}: decisions.parquet, replicates.parquet ({info['cells']} cells: winner "
            f"{100 * f['winner']:.1f}%, tied {100 * f['tied']:.1f}%, undecided {100 * f['undecided']:.1f}%, diverged "
            f"{100 * f['diverged']:.1f}%; {info['steps_computed']:.3g} steps in {info['wall_seconds']:.1f} s; looks at "
            f"{info['looks']} estimation replicates)")
