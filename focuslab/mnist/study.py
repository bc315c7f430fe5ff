"""The batch-size study: (optimizer, batch size) units -> joblib -> tidy tables, resumable.

Output directory:
  mnist.json      config, digest, versions, timings, status
  units/*.parquet one file per finished (optimizer, batch size) unit (the unit of resumption)
  runs.parquet    one row per (optimizer, batch size, lr, replicate)
  best.parquet    one row per (optimizer, batch size) at the lr with the lowest mean test loss
  curves.parquet  test loss/accuracy every --eval-every steps (when asked)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..config import load_toml, parse_grid
from ..errors import FocuslabError
from ..phase import best_per_cell
from ..results import open_results_dir, read_parquet, write_json, write_parquet
from .data import DATASETS

META = "mnist.json"
UNITS = "units"
KEYS = ("dataset", "optimizers", "batch_size", "lr", "replicates", "steps", "seed", "weight_decay",
        "eval_every")


@dataclass(frozen=True)
class MnistConfig:
    dataset: str
    optimizers: tuple
    batch_sizes: tuple
    lrs: tuple
    replicates: int
    steps: int
    seed: int
    weight_decay: float
    eval_every: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def units(self):
        """(optimizer, batch size), most expensive first (better load balance)."""
        return sorted(((o, b) for o in self.optimizers for b in self.batch_sizes), key=lambda u: -u[1])


def build_mnist_config(file_values: dict | None = None, overrides: dict | None = None) -> MnistConfig:
    merged = dict(load_toml("mnist-fig2cd", "mnist"))
    for source in (file_values or {}, overrides or {}):
        unknown = set(source) - set(KEYS)
        if unknown:
            raise FocuslabError(f"unknown mnist config key(s): {', '.join(sorted(unknown))} "
                                f"(known: {', '.join(KEYS)})")
        merged.update({k: v for k, v in source.items() if v is not None})
    from .train import optimizer_spec

    if merged["dataset"] not in DATASETS:
        raise FocuslabError(f"--dataset: unknown dataset {merged['dataset']!r} (choose from {', '.join(DATASETS)})")
    opts = merged["optimizers"]
    opts = tuple(o.strip() for o in opts.split(",") if o.strip()) if isinstance(opts, str) else tuple(opts)
    if not opts or len(set(opts)) != len(opts):
        raise FocuslabError("--optimizers: give distinct optimizers, e.g. adamw,signum,focus-0.2")
    for o in opts:
        optimizer_spec(o)
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
    ints = {}
    for key, low in (("replicates", 1), ("steps", 1), ("seed", 0), ("eval_every", 0)):
        try:
            ints[key] = int(merged[key])
        except (TypeError, ValueError):
            raise FocuslabError(f"--{key.replace('_', '-')}: expected an integer, got {merged[key]!r}") from None
        if ints[key] < low:
            raise FocuslabError(f"--{key.replace('_', '-')}: must be >= {low}, got {ints[key]}")
    wd = float(merged["weight_decay"])
    if wd < 0:
        raise FocuslabError("--weight-decay: must be >= 0")
    return MnistConfig(merged["dataset"], opts, tuple(bs), tuple(lrs), weight_decay=wd, **ints)


@lru_cache(maxsize=2)
def _data(dataset: str, data_dir: str | None, device: str):
    import torch

    from .data import load_dataset
    from .train import to_tensors

    return to_tensors(load_dataset(dataset, data_dir, progress=False), device=device, dtype=torch.float32)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FocuslabError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if device not in ("cpu", "cuda"):
        raise FocuslabError(f"--device: expected cpu, cuda or auto, got {device!r}")
    return device


def run_unit(config: MnistConfig, optimizer: str, batch_size: int, data_dir, device: str,
             threads: int | None) -> tuple:
    """Worker body: train one (optimizer, batch size) unit; returns its tables."""
    import torch

    from .train import train_batched

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    out = train_batched(_data(config.dataset, data_dir, device), optimizer, batch_size, config.lrs,
                        config.replicates, config.steps, seed=config.seed,
                        weight_decay=config.weight_decay, device=device, eval_every=config.eval_every)
    rows = []
    for i, lr in enumerate(config.lrs):
        for r in range(config.replicates):
            rows.append({"optimizer": optimizer, "batch_size": batch_size, "lr": lr, "replicate": r,
                         "test_loss": out["test_loss"][i, r], "test_accuracy": out["test_accuracy"][i, r],
                         "train_loss": out["train_loss"][i, r], "diverged": bool(out["diverged"][i, r]),
                         "steps": config.steps})
    curves = [{"optimizer": optimizer, "batch_size": batch_size, "lr": config.lrs[k // config.replicates],
               "replicate": k % config.replicates, "step": step, "test_loss": loss[k],
               "test_accuracy": acc[k]}
              for step, loss, acc in out["curves"] for k in range(len(loss))]
    return optimizer, batch_size, pd.DataFrame(rows), pd.DataFrame(curves), time.perf_counter() - t0


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


def run_study(config: MnistConfig, out: Path, jobs: int | None = None, device: str = "cpu",
              data_dir=None, force: bool = False, progress: bool = True) -> dict:
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    device = resolve_device(device)
    fresh = {"kind": "mnist", "config": asdict(config), "digest": config.digest(),
             "version": __version__, "status": "running", "timings": {"attempts": []}}
    out = Path(out)
    meta = open_results_dir(out, META, config.digest(), fresh, UNITS,
                            ("runs.parquet", "best.parquet", "curves.parquet"), force, "MNIST study")
    meta_path = out / META
    _data(config.dataset, str(data_dir) if data_dir else None, device)  # fail early, fetch once
    todo = [u for u in config.units() if not (out / UNITS / f"{u[0]}-bs{u[1]}.parquet").exists()]
    jobs = 1 if device == "cuda" else (jobs or os.cpu_count() or 1)
    jobs = max(1, min(jobs, len(todo) or 1))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    t0 = time.time()
    seconds = {}
    with tqdm(total=len(todo), unit="unit", disable=not progress or not sys.stderr.isatty(),
              desc="mnist") as bar:
        results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
            delayed(run_unit)(config, o, b, str(data_dir) if data_dir else None, device, threads)
            for o, b in todo)
        for opt, bs, rows, curves, secs in results:
            if len(curves):
                write_parquet(curves, out / UNITS / f"{opt}-bs{bs}.curves.parquet")
            write_parquet(rows, out / UNITS / f"{opt}-bs{bs}.parquet")
            seconds[f"{opt}-bs{bs}"] = round(secs, 3)
            bar.update()
    units = config.units()
    order = {u: i for i, u in enumerate((o, b) for o in config.optimizers for b in config.batch_sizes)}
    runs = pd.concat([read_parquet(out / UNITS / f"{o}-bs{b}.parquet")
                      for o, b in sorted(units, key=order.get)], ignore_index=True)
    write_parquet(runs, out / "runs.parquet")
    write_parquet(summarise(runs), out / "best.parquet")
    if config.eval_every:
        curves = [out / UNITS / f"{o}-bs{b}.curves.parquet" for o, b in sorted(units, key=order.get)]
        write_parquet(pd.concat([read_parquet(c) for c in curves if c.exists()], ignore_index=True),
                      out / "curves.parquet")
    attempt = {"wall_seconds": round(time.time() - t0, 3), "units_computed": len(todo),
               "units_total": len(units), "unit_seconds": seconds, "jobs": jobs, "device": device,
               "threads_per_job": threads}
    meta["status"] = "complete"
    meta["timings"]["attempts"].append(attempt)
    write_json(meta, meta_path)
    return attempt
