"""Plan before work: every check ``focuslab refine`` makes and everything it decides before it
computes -- the scan it refines, the settings, what an earlier refinement of the directory holds
(resume, start over with --force, complete, tables to rebuild), whether the directory can be
written, the work units -- and the work it will take.  ``plan_refine`` is the one validation path:
the dry run prints its plan, the run starts from it, and both refuse the same things in the same
words.  It writes nothing."""
from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..axes import CELL_NAMES
from ..config import config_digest
from ..devices import usable_cpus
from ..errors import FocuslabError
from .lattice import MAX_TRIALS, SCREEN_STEPS, SCREEN_Z, candidate_spaces
from .procedure import PRUNE_FROM, RETIRE_P
from .settings import SELECTION_EVERY, RefineParams, RefineRun, fresh_count
from .tables import REFINE, outputs, rerun_command

#: The procedure (focuslab.refine's docstring states it) by name and version, as scan.json records
#: it.  The version is part of the digest, so units written by another version are never mixed
#: into a refinement; change it with any change to what the work units hold or how decisions are made.
PROCEDURE = {"name": "focuslab.refine", "version": 3}
#: Per cell, look and pair of optimizers, the procedure's own work beside the simulator (racing,
#: the statements' bisections): 13 ms a look for 2 optimizers, 20 ms for 3, measured with a pool
#: sampler (no simulation) on a loaded 2-core machine.
PAIR_LOOK_SECONDS = 7e-3


def refine_digest(scan_digest: str, params: RefineParams, tuned: bool = False) -> str:
    return config_digest({"scan": scan_digest, "refine": asdict(params), "procedure": PROCEDURE["version"],
                          "selection_every": SELECTION_EVERY, "screen_z": SCREEN_Z, "screen_steps": SCREEN_STEPS,
                          "prune_from": PRUNE_FROM, "retire_p": RETIRE_P, "spending": "n^2",
                          "test": "skew-corrected, a in (1/3, (3c-1)/6)",
                          # only for a tuned scan, so that other refinements keep their digests
                          **({"max_trials": MAX_TRIALS} if tuned else {})})


def unit_name(chunk: int, rnd: int, cells=(), targets=()) -> str:
    """The work unit of ``chunk`` in pass ``rnd`` (0: the first pass; later passes continue the
    ``cells`` that stopped early but failed BH, with their stop ``targets``)."""
    import hashlib
    import json

    if rnd == 0:
        return f"c{chunk:05d}"
    tag = hashlib.sha256(json.dumps([list(map(int, cells)), [float(t) for t in targets]]).encode()).hexdigest()[:10]
    return f"r{rnd}-c{chunk:05d}-{tag}"


def procedure_of(record: dict) -> dict:
    """The procedure a refine record names: {"name", "version"}.  Records written before the name
    was recorded hold the docstring's prose under "procedure" and the version under
    "procedure_version"."""
    found = record.get("procedure")
    if isinstance(found, dict):
        return {"name": found.get("name", PROCEDURE["name"]), "version": found.get("version")}
    return {"name": PROCEDURE["name"], "version": record.get("procedure_version")}


def new_record(digest: str, params: RefineParams) -> dict:
    """scan.json's "refine" record of a refinement that starts."""
    import time

    from .. import __version__

    return {"digest": digest, "params": asdict(params), "procedure": dict(PROCEDURE), "status": "running",
            "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "attempts": []}


def cannot_write(directory: Path, params: RefineParams, err: OSError | None = None) -> FocuslabError:
    """One line for a results directory refine cannot write to, with the way out."""
    code = err.errno if err is not None else errno.EROFS if _read_only(directory) else errno.EACCES
    why = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.ENOSPC: "the disk is full"}.get(
        code, (err.strerror if err is not None else None) or "not writable")
    return FocuslabError(f"{directory}: cannot write there ({why}); refine writes its tables beside the scan: copy it "
                         f"somewhere writable (`cp -r {directory} COPY`) and run `{rerun_command('COPY', params)}`")


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def writable(directory: Path) -> bool:
    """Whether refine can write its tables and work units in ``directory`` (access(2), which also
    says no on a read-only mount, for root too)."""
    directory = Path(directory)
    own = directory / REFINE
    return os.access(directory, os.W_OK) and (not own.exists() or os.access(own, os.W_OK | os.X_OK))


@dataclass
class Standing:
    """What an earlier refinement of the directory means for a run with these settings."""

    record: dict | None  # scan.json's refine record that the run continues (None: a new one starts)
    replace: bool = False  # --force: another refinement's units and tables go first
    complete: bool = False  # complete with these settings, every table readable
    unreadable: list = field(default_factory=list)  # tables of a complete refinement to rebuild


def standing(directory: Path, meta: dict, params: RefineParams, digest: str, force: bool) -> Standing:
    """The decision the dry run reports and the run takes (again, under its lock)."""
    from ..results import readable_table

    record = meta.get("refine")
    if record and record.get("digest") != digest:
        if not force:
            said = _what_differs(record, params, digest)
            raise FocuslabError(f"{directory} was refined with other settings ({said}); use --force to start the "
                                "refinement over")
        return Standing(None, replace=True)
    if not record or record.get("status") != "complete":
        return Standing(record)
    bad = [p for p in outputs(directory) if not readable_table(p)]
    return Standing(record, complete=not bad, unreadable=[str(p.relative_to(directory)) for p in bad])


def _what_differs(record: dict, params: RefineParams, digest: str) -> str:
    """The settings (as flags) or the procedure in which an earlier refinement differs."""
    from ..options import flag
    from ..results import differences

    said = [f"{flag(d.split(':')[0])}:{d.split(':', 1)[1]}" for d in differences(record.get("params") or {},
                                                                             asdict(params))]
    old, new = procedure_of(record), PROCEDURE
    if old != new:
        said.append(f"procedure {old['name']} {old['version']} -> {new['name']} {new['version']}")
    return "; ".join(said) or f"digest {record.get('digest')} vs {digest}"


def screen_arrays(config, runs) -> tuple[dict, dict]:
    """The scan's means and standard errors per cell over each optimizer's candidates: the grid lrs
    (sorted), or a tuned optimizer's design trials (in the scan's order): what the race starts from,
    as label -> (cells, candidates) arrays.  An optimizer the scan has no rows for in a cell has
    mean +inf there."""
    grid = np.sort(np.asarray(config.axes["lr"].values, dtype=float))
    tuning = getattr(config, "tuning", None)
    means, sems = {}, {}
    for o in config.optimizers:
        rows = runs[runs["optimizer"] == o]
        if tuning is not None and o in tuning.spaces:
            design = [i for i, t in enumerate(config.trials(o)) if t.design]
            where = {t: n for n, t in enumerate(design)}
            rows = rows[rows["design"].to_numpy(bool)]
            j = rows["trial"].map(where).to_numpy()
            ok = ~np.isnan(j.astype(float))
            width = len(design)
        else:
            lr = rows["lr"].to_numpy(float)
            j = np.clip(np.searchsorted(grid, lr), 0, len(grid) - 1)
            ok = grid[j] == lr
            width = len(grid)
        m, s = np.full((config.n_cells, width), np.nan), np.full((config.n_cells, width), np.nan)
        c, j = rows["cell"].to_numpy()[ok], j[ok].astype(int)
        m[c, j] = rows["final_loss_mean"].to_numpy(float)[ok]
        s[c, j] = rows["final_loss_sem"].to_numpy(float)[ok]
        seen = np.zeros(config.n_cells, dtype=bool)
        seen[c] = True
        m[~seen] = np.inf
        means[o], sems[o] = m, s
    return means, sems


@dataclass
class RefinePlan:
    """A refinement before it starts: what the checks found and the work it will take."""

    directory: Path
    params: RefineParams
    run: RefineRun
    jobs: int
    shard: tuple | None
    config: object  # the scan's ScanConfig
    digest: str
    plugins: dict  # how the scan ran each external optimizer on the toy (label -> plan)
    standing: Standing
    cells: np.ndarray  # (cells, 5) coordinates
    means: dict  # screen_arrays: label -> (cells, candidates)
    sems: dict
    chunks: list  # the cells of each work unit of the first pass
    mine: list  # the chunks this run computes (all, or a shard's)
    done: int  # of those, units already on disk
    candidates: np.ndarray  # (cells, optimizers): the lrs each race starts from
    work: Work | None = None  # what the first pass still has to do (estimate)

    @property
    def complete(self) -> bool:
        return self.standing.complete


@dataclass(frozen=True)
class Work:
    """What the first pass still has to simulate, at least and at most, and how long it takes."""

    steps_least: int  # every live cell to its first look, on the lrs it starts from
    steps_most: int  # every candidate the race can hold, at every look
    seconds_least: float
    seconds_most: float
    workers: int


def plan_refine(directory, params: RefineParams, run: RefineRun = RefineRun(), *,
                jobs: int | None = None) -> RefinePlan:
    """Check a refinement as the run does and plan it (see the module docstring); writes nothing."""
    import pandas as pd

    from ..results import load_scan, readable_table
    from ..runner import unit_path
    from ..scan import cell_values, config_from_meta, parse_shard

    if jobs is not None and jobs < 1:
        raise FocuslabError(f"--jobs: must be >= 1, got {jobs}")
    params = params.validate()
    shard = parse_shard(run.shard) if run.shard else None
    directory = Path(directory)
    meta, runs, _ = load_scan(directory)
    config = config_from_meta(meta)
    digest = refine_digest(meta["digest"], params, tuned=getattr(config, "tuning", None) is not None)
    found = standing(directory, meta, params, digest, run.force)
    if not (found.complete and shard is None) and not writable(directory):
        raise cannot_write(directory, params)
    cells = cell_values(config)
    index = pd.DataFrame(cells, columns=list(CELL_NAMES)).assign(cell=np.arange(config.n_cells))
    means, sems = screen_arrays(config, runs.merge(index, on=list(CELL_NAMES), how="inner"))
    chunks = [list(range(s, min(s + params.chunk_cells, config.n_cells)))
              for s in range(0, config.n_cells, params.chunk_cells)]
    mine = [k for k in range(len(chunks)) if shard is None or k % shard[1] == shard[0] - 1]
    work = directory / REFINE / "units"
    done = [k for k in mine if not found.replace and readable_table(unit_path(work, unit_name(k, 0)))]
    spaces = candidate_spaces(config, params)
    candidates = np.array([[len(spaces[o].initial((means[o][c], sems[o][c]))) for o in config.optimizers]
                           for c in range(config.n_cells)], dtype=np.int64).reshape(config.n_cells, -1)
    plan = RefinePlan(directory=directory, params=params, run=run, jobs=jobs or usable_cpus(), shard=shard,
                      config=config, digest=digest, plugins=meta.get("plugins") or {}, standing=found, cells=cells,
                      means=means, sems=sems, chunks=chunks, mine=mine, done=len(done), candidates=candidates)
    plan.work = estimate(plan, [c for k in mine if k not in done for c in chunks[k]], spaces)
    return plan


def estimate(plan: RefinePlan, todo: list, spaces: dict) -> Work:
    """The work of the first pass over the cells ``todo``: optimizer steps at least and at most
    (Lattice.most: the candidates a race can hold), and seconds at the engines' speeds on one core
    (focuslab.scan.engine_speeds: the numba kernel's, a plug-in's as the scan's probe measured it)
    plus the procedure's own work, over the workers that have units to run."""
    from ..scan import engine_speeds

    config = plan.config
    looks = plan.params.looks()
    fresh = [fresh_count(n) for n in looks]
    first = plan.candidates[todo]  # (cells, optimizers)
    most = np.stack([spaces[o].most(len(looks), first[:, k]) for k, o in enumerate(config.optimizers)], axis=1) \
        if len(todo) else first
    most = np.where(first > 0, most, 0)
    speeds = engine_speeds(config, plan.plugins)
    per_step = np.array([speeds[o] for o in config.optimizers])
    least_steps, most_steps = first * fresh[0] * config.steps, most * fresh[-1] * config.steps
    pairs = len(config.optimizers) * (len(config.optimizers) - 1) / 2
    judged = PAIR_LOOK_SECONDS * max(1.0, pairs) * int((first > 0).any(axis=1).sum())  # each live cell, a look
    workers = max(1, min(plan.jobs, len(plan.mine) - plan.done))
    return Work(steps_least=int(least_steps.sum()), steps_most=int(most_steps.sum()),
                seconds_least=(float((least_steps * per_step).sum()) + judged) / workers,
                seconds_most=(float((most_steps * per_step).sum()) + judged * len(looks)) / workers,
                workers=workers)


def _spread(counts: np.ndarray) -> str:
    live = counts[counts > 0]
    if not len(live):
        return "none (every grid lr diverged)"
    lo, hi = int(live.min()), int(live.max())
    span = f"{lo}" if lo == hi else f"{lo}-{hi} (mean {live.mean():.1f})"
    gone = int((counts == 0).sum())
    return span + (f", none in {gone} cell(s) where it diverged at every grid lr" if gone else "")


def describe_plan(plan: RefinePlan) -> str:
    """The plan as ``focuslab refine --dry-run`` prints it."""
    from ..runner import _amount, _duration

    p, config, d = plan.params, plan.config, plan.directory
    opts = list(config.optimizers)
    if plan.complete and plan.shard is None:
        return f"{d}: already refined with these settings; nothing to do (`focuslab plot {d}` draws it)"
    lattice = candidate_spaces(config, p)[opts[0]]
    lattice = getattr(lattice, "lattice", lattice)
    looks = p.looks()
    fresh = [fresh_count(n) for n in looks]
    if plan.standing.replace:
        state = "--force: starts over (the refinement made with other settings and its work units are removed)"
    elif plan.standing.unreadable:
        state = (f"rebuilds {', '.join(plan.standing.unreadable)} (unreadable) from the work units ({plan.done} of "
                 f"{len(plan.mine)} first-pass units on disk)")
    elif plan.standing.record:
        state = f"resumes the refinement with these settings: {plan.done} of {len(plan.mine)} work units done"
    else:
        state = "a new refinement"
    scope = f"shard {plan.shard[0]}/{plan.shard[1]}: {len(plan.mine)} of {len(plan.chunks)} work unit(s)" \
        if plan.shard else f"{len(plan.chunks)} work unit(s) of up to {p.chunk_cells} cells"
    external = [e.label for e in config.entries if e.label in plan.plugins]
    how = "the numba kernel's speed" + (f" and the probed speed of {', '.join(external)}" if external else "")
    w = plan.work
    rows_most = w.steps_most // max(1, config.steps)
    lines = [
        f"{d}: refine {config.n_cells} cells x {len(opts)} optimizers ({', '.join(opts)}) of this scan "
        f"({config.steps} steps a trajectory); {state}; {scope}",
        "  candidate lrs (a tuned optimizer's: its trials) the race starts from, per cell: " + "; ".join(
            f"{o} {_spread(plan.candidates[:, k])}" for k, o in enumerate(opts))
        + f"; up to 3 more join after each look, from {lattice.lr(lattice.lo):.3g} to {lattice.lr(lattice.hi):.3g} "
        f"(--lr-levels {p.lr_levels}, --extend-steps {p.extend_steps})",
        f"  looks at {', '.join(map(str, looks))} estimation replicates per lr ({', '.join(map(str, fresh))} fresh "
        f"with the selection replicates); a cell stops at its first look with p <= {p.fdr:g}; BH at FDR {p.fdr:g} "
        f"over the map, margin {100 * p.equivalence:g}%",
        f"  optimizer steps still to do: at least {_amount(w.steps_least)} (every cell to its first look), at most "
        f"{_amount(w.steps_most)} (every candidate at every look); cells that stop early but fail BH are re-run "
        "with a stricter target",
        f"  ETA ~{_duration(w.seconds_least)} to ~{_duration(w.seconds_most)} on {w.workers} worker(s) at {how}",
        f"  writes decisions.parquet, replicates.parquet (at most {_amount(rows_most)} rows still to add) and "
        f"refine/lrs.parquet beside the scan; work units in {d / REFINE / 'units'}",
    ]
    return "\n".join(lines)
