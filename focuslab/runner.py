"""The resumable unit runner behind ``scan``, ``mnist`` and ``refine``, and progress reporting for
every command.

A study is a list of *units* (a scan chunk, an MNIST (optimizer, batch size) pair, ...).  Each
finished unit is one parquet file ``WORK/NAME.parquet`` (plus optional side tables such as
``NAME.curves.parquet``, written first), so the primary file's presence means "done".  The runner:

1. checks the unit files already on disk before computing anything: an unreadable one (a disk
   that filled up, a copy cut short) is moved aside to ``WORK/corrupt/`` and reported, then
   recomputed -- nothing is lost and nothing has to be deleted by hand;
2. computes the missing units in parallel (joblib; any backend set by the caller's
   ``parallel_config``, e.g. Dask), writing each result atomically as it arrives;
3. reports progress: a tqdm bar on a terminal, otherwise (SLURM logs, nohup, pipes) one line
   every 30 s ($FOCUSLAB_PROGRESS_EVERY) with done/total, rate and ETA.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .results import readable_table as _readable
from .results import write_parquet


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds}s"
    if seconds < 5400:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _amount(x: float) -> str:
    for unit, scale in (("e12", 1e12), ("e9", 1e9), ("e6", 1e6), ("e3", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def progress_interval() -> float:
    """Seconds between progress lines when output is not a terminal: $FOCUSLAB_PROGRESS_EVERY or 30."""
    import os

    try:
        return max(0.0, float(os.environ.get("FOCUSLAB_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


class Progress:
    """Done/total with rate and ETA: a tqdm bar on a terminal, else a line every ``interval`` s.

    ``total`` is the work in the unit named by ``what`` (e.g. optimizer steps) and drives rate and
    ETA.  ``bar=False`` prints lines even on a terminal (for commands that print their own log).  Optionally ``count_total`` counts something more meaningful to show (model-steps) when
    ``total`` is a cost estimate, and ``unit_total`` the pieces (chunks, units).  In-flight work
    reported by workers is added with ``set_partial``.  ``enabled=False`` prints nothing.
    """

    def __init__(self, total: float, what: str = "steps", desc: str = "", enabled: bool = True,
                 stream=None, interval: float | None = None, unit_total: int | None = None,
                 unit_name: str = "units", count_total: float | None = None, count_what: str = "",
                 bar: bool = True):
        self.total, self.what, self.desc = float(total), what, desc
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.interval = progress_interval() if interval is None else interval
        self.unit_total, self.unit_name = unit_total, unit_name
        self.count_total, self.count_what = count_total, count_what
        self.done = self.count = 0.0
        self.partial = self.partial_count = 0.0
        self.units = 0
        self.start = self.last = time.time()
        self.bar = None
        if bar and self.enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, unit=" " + what, unit_scale=True, dynamic_ncols=True,
                            desc=desc, file=self.stream)

    def eta(self) -> str:
        elapsed = time.time() - self.start
        done = self.done + self.partial
        return _duration((self.total - done) * elapsed / done) if done > 0 else "?"

    def line(self) -> str:
        elapsed = time.time() - self.start
        done = self.done + self.partial
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else math.inf
        parts = []
        if self.unit_total is not None:
            parts.append(f"{self.units}/{self.unit_total} {self.unit_name}")
        if self.count_total is not None:
            parts.append(f"{_amount(self.count + self.partial_count)}/{_amount(self.count_total)} {self.count_what}")
            parts.append(f"{100 * done / self.total:.0f}% of the work")
        else:
            parts.append(f"{_amount(done)}/{_amount(self.total)} {self.what} ({100 * done / self.total:.0f}%), "
                         f"{_amount(rate)} {self.what}/s")
        return f"{self.desc}: {', '.join(parts)}, elapsed {_duration(elapsed)}, ETA {_duration(eta)}"

    def update(self, amount: float, units: int = 0, count: float = 0.0) -> None:
        self.done += amount
        self.count += count
        self.units += units
        self.tick(amount)

    def set_partial(self, amount: float, count: float = 0.0) -> None:
        """Work done so far by units still in flight (replaces the previous figure)."""
        delta = amount - self.partial
        self.partial, self.partial_count = amount, count
        self.tick(delta)

    def tick(self, delta: float = 0.0) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(delta)
        elif time.time() - self.last >= self.interval:
            self.last = time.time()
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        elif self.done > 0:
            print(self.line(), file=self.stream, flush=True)


class InflightReporter:
    """Called by a worker with the fraction of its unit done; writes it for the parent's progress
    line at most every ``every`` seconds (``run_units(..., inflight=DIR)`` reads these files)."""

    def __init__(self, path: Path | None, every: float = 5.0):
        self.path, self.every, self.last = path, every, 0.0

    def __call__(self, fraction: float) -> None:
        if self.path is None or time.time() - self.last < self.every:
            return
        self.last = time.time()
        import json

        from .results import WriteError, atomic_write_bytes

        try:
            atomic_write_bytes(self.path, json.dumps({"fraction": float(fraction)}).encode())
        except WriteError:  # progress is best effort
            pass


@dataclass(frozen=True)
class Unit:
    """One resumable piece of work: ``compute(*args)`` makes its tables (``sides`` names the side
    tables it must leave beside its primary one)."""

    name: str
    cost: float  # for progress and ETA (any consistent measure: optimizer steps, model-steps, ...)
    args: tuple = field(default=(), compare=False)
    sides: tuple = ()


def unit_path(work: Path, name: str, suffix: str = "") -> Path:
    return Path(work) / (f"{name}.{suffix}.parquet" if suffix else f"{name}.parquet")


def pending(work: Path, units: list[Unit], log: Callable[[str], None] = print, repair: bool = True) -> list[Unit]:
    """Units whose primary file is missing; an unreadable file is moved to WORK/corrupt/ (with a
    time stamp), reported through ``log`` and counted as missing (without ``repair``, as a dry run
    asks: only counted)."""
    work = Path(work)
    todo = []
    for u in units:
        paths = [unit_path(work, u.name, side) for side in u.sides] + [unit_path(work, u.name)]
        if not paths[-1].exists():
            todo.append(u)
            continue
        bad = [p for p in paths if p.exists() and not _readable(p)]
        for path in bad if repair else ():
            aside = work / "corrupt" / f"{path.name[:-8]}.{time.strftime('%Y%m%dT%H%M%S')}.parquet"
            aside.parent.mkdir(exist_ok=True)
            path.replace(aside)
            log(f"{path} was unreadable (corrupt or cut short); moved it to {aside} and will recompute it")
        if bad or not all(p.exists() for p in paths):
            todo.append(u)
    return todo


def run_units(work: Path, todo: list[Unit], compute: Callable | None = None, *, jobs: int = 1,
              progress: Progress, inflight: Path | None = None, counts: dict | None = None,
              batched: Callable | None = None) -> dict:
    """Compute ``todo`` with ``compute(*unit.args) -> tables`` in up to ``jobs`` processes (under
    the caller's joblib parallel_config), writing ``tables`` -- a dict suffix -> DataFrame, "" the
    primary table -- atomically as each unit arrives.  ``batched(units)`` instead computes them in
    this process, several at a time (a GPU's launches), yielding ``(name, tables, seconds)`` as each
    is done.  With ``inflight``, a thread adds the fractions workers report there (InflightReporter
    files named after the unit) to the progress line.  ``counts`` maps a unit name to what
    ``progress`` counts besides cost.  Returns per-unit seconds."""
    import threading

    from joblib import Parallel, delayed

    seconds: dict[str, float] = {}
    if not todo:
        return seconds
    counts = counts or {}
    by_name = {u.name: u for u in todo}
    stop = threading.Event()
    if inflight is not None:
        Path(inflight).mkdir(parents=True, exist_ok=True)
        for old in Path(inflight).glob("*.json"):
            old.unlink(missing_ok=True)
        monitor = threading.Thread(target=_watch, args=(Path(inflight), by_name, counts, progress, stop, seconds),
                                   daemon=True)
        monitor.start()
    if batched is not None:
        results = batched(todo)
    else:
        import warnings

        # loky replaces a worker whose memory grew past its limit between two units and says so with a
        # warning that reads like a crash ("A worker stopped while some jobs were given to the
        # executor"); nothing is lost (joblib#883, loky#641), so it is not the user's news
        warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor")
        tasks = (delayed(_call)(compute, u.name, u.args, os.getpid()) for u in todo)
        results = Parallel(n_jobs=max(1, min(jobs, len(todo))), return_as="generator_unordered")(tasks)
    try:
        for name, tables, secs in results:
            for suffix, table in sorted(tables.items(), key=lambda kv: kv[0] == ""):  # primary last
                if table is not None:
                    write_parquet(table, unit_path(work, name, suffix))
            seconds[name] = secs
            if inflight is not None:  # the unit is stored: its progress report and checkpoint go
                (Path(inflight) / f"{name}.json").unlink(missing_ok=True)
                (Path(inflight) / f"{name}.pt").unlink(missing_ok=True)
                progress.set_partial(*_partial(Path(inflight), by_name, counts, seconds))  # not counted twice
            progress.update(by_name[name].cost, units=1, count=counts.get(name, 0.0))
    finally:
        stop.set()
    return seconds


def complete(path: Path, meta: dict, attempt: dict) -> None:
    """Mark a study complete in its metadata file, with this attempt's record (one way for every
    study: scan, merge, mnist, refine)."""
    from .results import write_json

    meta["status"] = "complete"
    meta.setdefault("timings", {}).setdefault("attempts", []).append(attempt)
    write_json(meta, path)


WATCH_EVERY = 2.0  # seconds between reads of the in-flight reports


def _partial(inflight: Path, units: dict, counts: dict, finished) -> tuple[float, float]:
    """Cost and count done in the units still in flight, from their reports (a finished unit's
    report may linger a moment: it is skipped, being counted in full already)."""
    import json

    cost = count = 0.0
    for f in inflight.glob("*.json"):
        if f.stem not in units or f.stem in finished:
            continue
        try:
            fraction = min(1.0, max(0.0, json.loads(f.read_text())["fraction"]))
        except (OSError, ValueError, KeyError):
            continue
        cost += fraction * units[f.stem].cost
        count += fraction * counts.get(f.stem, 0.0)
    return cost, count


def _watch(inflight: Path, units: dict, counts: dict, progress: Progress, stop, finished) -> None:
    while not stop.wait(WATCH_EVERY):
        progress.set_partial(*_partial(inflight, units, counts, finished))


def _call(compute, name, args, parent: int | None = None):
    if parent is not None:
        exit_with_parent(parent)
    t0 = time.perf_counter()
    tables = compute(*args)
    return name, tables, time.perf_counter() - t0


_WATCHED: list = []  # the parent this worker process watches (set once per process)


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """In a worker process that ``parent`` started (a loky worker): exit as soon as ``parent`` is
    gone.  Without it the workers of a study killed with kill -9 stayed behind, idle, until loky's
    own timeout.  Nothing happens in ``parent`` itself (units run in-process with --jobs 1) nor in
    a worker that is not its child (a Dask worker on another machine).  The watch is a thread that
    looks every ``every`` seconds; the kernel releases the GIL, so it runs mid-chunk too."""
    import threading

    if _WATCHED or os.getpid() == parent or os.getppid() != parent:
        return
    _WATCHED.append(parent)

    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)  # orphaned: what it computes can no longer be stored

    threading.Thread(target=watch, name="focuslab-exit-with-parent", daemon=True).start()
