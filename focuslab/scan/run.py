"""Running a scan: ``run_scan`` computes every missing chunk (of the scan, or of one shard of it) on
the chosen backend and finishes the tables; ``ScanJob`` is one ``focuslab scan`` resolved (its config,
the results directory the library names, its run options), which the command only parses and calls."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ScanConfig, build_scan_config, load_toml, scan_table
from ..devices import usable_cpus
from ..errors import FocuslabError
from ..options import setting
from ..results import BEST, CHUNKS, META, RUNS, SHARDS, write_json
from .compute import _compute_unit, torch_batches
from .plan import _check_backend, assign_shards, describe_plan, parse_shard, plan_chunks, preflight, write_sbatch
from .store import TUNED, _environment, finish_scan, open_scan_dir


@dataclass(frozen=True)
class ScanRun:
    """The scan's own run options (beside focuslab.options.Common): sharding, backends, SLURM."""

    shard: str = setting(None, "compute only shard K of N (balanced by cost); `focuslab merge` assembles the tables",
                         metavar="K/N")
    backend: str = setting("loky", "where chunks run: local processes (loky) or a Dask cluster (dask)",
                           choices=("loky", "dask"))
    scheduler: str = setting(None, "the Dask scheduler (with --backend dask)", metavar="tcp://HOST:PORT")
    sbatch: str = setting(None, "write a SLURM driver script (an array of --shards tasks, then the merge) "
                                "instead of running", metavar="FILE")
    shards: int = setting(None, "array tasks of --sbatch", metavar="N")
    sbatch_option: str = setting(None, "an extra #SBATCH line for --sbatch, e.g. partition=cpu (repeatable)",
                                 metavar="NAME=VALUE", multiple=True)
    dry_run: bool = setting(False, "print the plan (and with --sbatch the script); compute and write nothing")
    allow_long: bool = setting(False, "run a plan estimated at more than a week on this machine")


def _backend_context(backend: str | None, scheduler: str | None):
    """joblib's parallel_config for the chosen backend (a Dask client when backend == 'dask')."""
    from contextlib import ExitStack

    from joblib import parallel_config

    stack = ExitStack()
    _check_backend(backend, scheduler)
    if backend in (None, "loky"):
        return stack, None
    try:
        from dask.distributed import Client
    except ImportError:
        raise FocuslabError("--backend dask needs dask.distributed: pip install 'focuslab[dask]'") from None
    try:
        client = stack.enter_context(Client(scheduler, timeout="10s", set_as_default=False))
    except (OSError, TimeoutError) as err:
        raise FocuslabError(f"--scheduler {scheduler}: cannot connect ({err})") from None
    workers = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
    stack.enter_context(parallel_config(backend="dask", client=client))  # joblib's dask backend
    return stack, max(workers, 1)


def run_scan(config: ScanConfig, out: Path, *, jobs: int | None = None, force: bool = False,
             progress: bool = True, backend: str | None = None, scheduler: str | None = None,
             shard: tuple[int, int] | None = None, log=None, device: str = "auto", allow_long: bool = False,
             announce=None) -> dict:
    """Compute every missing chunk of ``config`` (or of shard K/N of it) in ``out``.

    A full scan then assembles runs/best and marks scan.json complete; a shard records itself in
    shards/K-of-N.json for `focuslab merge`.  A scan that is already complete is left as it is
    (``already_complete`` in the summary).  A plan that cannot fit or would take more than a week is
    refused first (``preflight``), then ``announce(eta)`` is called with the plan's ETA ("~2h10m on 2
    worker(s)").  Returns a summary dict (chunks computed, wall time, ns per optimizer step).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    pre = preflight(config, out, jobs, force=force, backend=backend, scheduler=scheduler, device=device,
                    allow_long=allow_long, shard=shard)  # nothing written yet
    if announce is not None:  # the plan holds: say where the results will go, and when
        from ..runner import _duration

        announce(f"~{_duration(pre['plan']['eta_seconds'])} on {pre['workers']} worker(s)")
    from ..results import claim_dir, discard_if_empty, hold

    created = claim_dir(out, "scan")
    with hold(out, "scan", f"{shard[0]}-of-{shard[1]}" if shard else None):  # one process computes here
        try:
            return _run_scan(config, out, pre, jobs=jobs, force=force, progress=progress, backend=backend,
                             scheduler=scheduler, shard=shard, log=log)
        except BaseException:
            discard_if_empty(out, created, CHUNKS)  # a refused or interrupted first attempt leaves nothing behind
            raise


def _run_scan(config: ScanConfig, out: Path, pre: dict, *, jobs, force, progress, backend, scheduler, shard,
              log) -> dict:
    """run_scan's work once ``preflight`` (``pre``: the device's simulator, the plug-ins' plans, the
    engines' speeds) has passed and ``out`` is held."""
    from ..runner import Progress, Unit, pending, run_units

    sim, plans, speed = pre["sim"], pre["plans"], pre["speed"]
    meta = open_scan_dir(config, out, force)
    if plans and meta.get("plugins") != plans:
        meta["plugins"] = plans
        write_json(meta, out / META)
    chunks = plan_chunks(config)
    mine = chunks if shard is None else assign_shards(chunks, shard[1])[shard[0] - 1]
    # cost = expected seconds (steps x the engine's ns per step), so that ETAs hold for plug-ins that
    # take microseconds a step beside a kernel that takes nanoseconds; the steps are counted apart
    inflight = out / CHUNKS / ".inflight"
    units = [Unit(c.name, c.cost * speed[c.optimizer],
                  (config, c, plans.get(c.optimizer), str(inflight / f"{c.name}.json") if plans.get(c.optimizer) else None))
             for c in mine]
    steps_of = {c.name: c.cost for c in mine}
    todo = pending(out / CHUNKS, units, log)
    if shard is None and not todo and meta.get("status") == "complete":
        from ..results import readable_table

        tables = (RUNS, BEST) + (tuple(TUNED.values()) if config.tuning is not None else ())
        bad = [name for name in tables if not readable_table(out / name)]
        if not bad:
            return {"already_complete": True, "chunks_computed": 0, "chunks_total": len(mine),
                    "wall_seconds": 0.0, "ns_per_step_per_worker": None}
        log(f"{out}: {', '.join(bad)} missing or unreadable; rebuilding from the {len(mine)} chunk files")
    stack, workers = _backend_context(backend, scheduler)
    jobs = 1 if sim is not None else (jobs or workers or usable_cpus())
    started = time.time()
    work = sum(steps_of[u.name] for u in todo)
    with stack:
        if sim is None and todo and backend != "dask":  # compile (or load) each kernel once, before the workers
            for label in dict.fromkeys(u.args[1].optimizer for u in todo):  # start and before the ETA's clock
                config.entry(label).warm()
        bar = Progress(sum(u.cost for u in todo), "work", f"scan {out}", enabled=progress, unit_total=len(todo),
                       unit_name="chunks", count_total=work, count_what="steps")
        if sim is not None:
            seconds = run_units(out / CHUNKS, todo, progress=bar, counts={u.name: steps_of[u.name] for u in todo},
                                batched=torch_batches(config, sim))
        else:
            seconds = run_units(out / CHUNKS, todo, _compute_unit, jobs=jobs, progress=bar,
                                inflight=inflight if plans else None, counts={u.name: steps_of[u.name] for u in todo})
        bar.close()
    compute_s = sum(seconds.values())
    wall = time.time() - started
    attempt = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
               "wall_seconds": round(wall, 3), "compute_seconds": round(compute_s, 3),
               "chunks_computed": len(todo), "chunks_total": len(mine), "jobs": jobs,
               "backend": backend or "loky", "steps_computed": work,
               "device": sim.describe() if sim is not None else "cpu (numba kernel)",
               "ns_per_step_per_worker": round(compute_s / work * 1e9, 3) if work else None,
               "environment": _environment()}
    if shard is not None:
        record = {"kind": "shard", "shard": list(shard), "digest": config.digest(),
                  "config": config.to_dict(), "scan": scan_table(config), "chunks": [c.name for c in mine],
                  "cost": sum(c.cost for c in mine), "status": "complete", "timings": attempt}
        (out / SHARDS).mkdir(exist_ok=True)
        write_json(record, out / SHARDS / f"{shard[0]}-of-{shard[1]}.json")
        return {**attempt, "shard": list(shard)}
    finish_scan(config, out, meta, chunks, attempt)
    return attempt


@dataclass(frozen=True)
class ScanJob:
    """One ``focuslab scan``, resolved: the frozen config, the results directory (the given --out, or
    the one ``scan_job`` names), Common's --jobs/--force/--device and the scan's own ScanRun options."""

    config: ScanConfig
    out: Path
    run: ScanRun = field(default_factory=ScanRun)
    jobs: int | None = None
    force: bool = False
    device: str = "auto"

    @property
    def shard(self) -> tuple[int, int] | None:
        """--shard K/N parsed (read only where a shard is computed or planned)."""
        return parse_shard(self.run.shard) if self.run.shard else None

    @property
    def action(self) -> str:
        """'plan' (--dry-run: the plan in one line), 'script' (--sbatch/--shards: the SLURM script,
        written or, with --dry-run, shown) or 'run'."""
        if self.run.dry_run and not self.run.sbatch and self.run.shards is None:
            return "plan"
        if self.run.sbatch or self.run.dry_run or self.run.shards is not None:
            return "script"
        return "run"

    def describe(self) -> str:
        """The plan in one line, after the run's own checks (``focuslab scan --dry-run``)."""
        return describe_plan(self.config, self.out, self.jobs, force=self.force, backend=self.run.backend,
                             scheduler=self.run.scheduler, device=self.device, allow_long=self.run.allow_long,
                             shard=self.shard)

    def script(self) -> str:
        """The SLURM driver script (shown with --dry-run), or the line saying where it was written."""
        return write_sbatch(self.config, self.out, sbatch_file=self.run.sbatch, shards=self.run.shards, jobs=self.jobs,
                            sbatch_options=self.run.sbatch_option, dry_run=self.run.dry_run)

    def execute(self, *, progress: bool = True, announce=None) -> dict:
        """Run it (``run_scan``); ``announce`` hears the plan's ETA once the plan holds."""
        shard = self.shard
        return run_scan(self.config, self.out, jobs=self.jobs, force=self.force, progress=progress,
                        backend=self.run.backend, scheduler=self.run.scheduler, shard=shard, device=self.device,
                        allow_long=self.run.allow_long, announce=announce)


def scan_job(flags: dict | None = None, *, config: str | None = None, out: str | Path | None = None,
             jobs: int | None = None, force: bool = False, device: str = "auto", **options) -> ScanJob:
    """``focuslab scan``'s job from its flags (the [scan] table's keys, ``--opt-param`` and ``--tune``
    parsed), ``config`` (a TOML file or a preset; default: preset ``default``) and its run options
    (``options``: ScanRun's fields).  Without ``out`` its results directory is results/PRESET for a
    preset or file as it is, else results/PRESET-DIGEST8 (results/scan-DIGEST8 over the default
    preset): the same command finds, and resumes, its own directory."""
    from ..results import default_out

    file_values = load_toml(config, "scan") if config else None
    cfg = build_scan_config(file_values, flags)
    if out is None:
        preset = Path(config).stem if config else "default"
        out = default_out(preset, cfg.digest(), build_scan_config(file_values).digest(),
                          adhoc=preset if config else "scan")
    return ScanJob(cfg, Path(out), ScanRun(**options), jobs=jobs, force=force, device=device)
