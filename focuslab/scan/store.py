"""A scan's results directory: opening it for a config, the config a scan.json describes, and
finishing: the runs/best tables (and a tuned scan's) assembled from the chunk files in plan order,
whatever order they were computed in, by one run or by ``focuslab merge`` from its shards."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..config import ScanConfig, build_scan_config, scan_table
from ..errors import FocuslabError
from ..options import setting
from ..phase import best_per_cell
from ..results import (BEST, CHUNKS, META, RUNS, SHARDS, atomic_write_bytes, open_results_dir, read_json,
                       read_parquet, write_parquet)
from .plan import Chunk, plan_chunks


@dataclass(frozen=True)
class MergeSettings:
    """The merge command's flags."""

    out: str = setting(None, "where runs.parquet, best.parquet and scan.json go (may be one of the shard directories)",
                       metavar="DIR", shown="required")
    quiet: bool = setting(False, "print nothing but errors", short="-q")


def _environment() -> dict:
    import numba
    return {"focuslab": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "pandas": pd.__version__, "machine": platform.machine(),
            "host": platform.node(), "cpus": os.cpu_count()}


def config_from_meta(meta: dict) -> ScanConfig:
    """The ScanConfig a scan.json describes, checked against its digest."""
    if "scan" not in meta:
        raise FocuslabError("scan.json has no [scan] table (written by a focuslab older than 0.1); re-run the scan")
    config = build_scan_config(meta["scan"])
    if config.digest() != meta.get("digest"):
        raise FocuslabError("scan.json's config does not rebuild to its digest (written by another focuslab "
                            "version, or an optimizer's code changed since)")
    return config


def open_scan_dir(config: ScanConfig, out: Path, force: bool = False) -> dict:
    """Prepare ``out`` for ``config``: refuse a different config unless ``force``; return metadata."""
    fresh = {"kind": "scan", "config": config.to_dict(), "scan": scan_table(config), "digest": config.digest(),
             "seed": config.seed, "version": __version__, "status": "running",
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "timings": {"attempts": []}}
    return open_results_dir(out, META, config.digest(), fresh, work_dir=CHUNKS, outputs=(RUNS, BEST), force=force,
                            what="scan", kind="scan")


#: The further tables of a tuned scan (focuslab.tuning.tuned_tables).
TUNED = {"best_defaults": "best_defaults.parquet", "tuning": "tuning.parquet"}


def finish_scan(config: ScanConfig, out: Path, meta: dict, chunks: list[Chunk], attempt: dict) -> None:
    """Assemble runs/best (and a tuned scan's best_defaults and tuning curves) from the chunk files
    and mark the scan complete."""
    from ..runner import complete

    runs = assemble_runs(out, chunks)
    write_parquet(runs, out / RUNS)
    if config.tuning is None:
        write_parquet(best_per_cell(runs), out / BEST)
    else:
        from ..tuning import tuned_tables

        tables = tuned_tables(runs, config)
        write_parquet(tables.pop("best"), out / BEST)
        for name, table in tables.items():
            write_parquet(table, out / TUNED[name])
    complete(out / META, meta, attempt)


def assemble_runs(out: Path, chunks: list[Chunk]) -> pd.DataFrame:
    """Concatenate chunk tables in plan order (independent of completion order)."""
    frames = [read_parquet(Path(out) / CHUNKS / f"{c.name}.parquet") for c in chunks]
    return pd.concat(frames, ignore_index=True)


def merge_shards(dirs: list[Path], out: Path) -> dict:
    """Check that the shards in ``dirs`` form one complete scan and write its tables to ``out``.

    Every shard must come from the same config and seed (same digest) and the same N; each of the
    N shards must appear exactly once and hold all of its chunk files.  The tables are then
    assembled exactly as an unsharded run would (bit-identical contents).
    """
    records = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise FocuslabError(f"merge: {d} is not a directory")
        found = sorted((d / SHARDS).glob("*-of-*.json"))
        if not found:
            raise FocuslabError(f"merge: {d} holds no shard records ({SHARDS}/K-of-N.json)")
        records += [(d, read_json(f)) for f in found]
    first_dir, first = records[0]
    for d, rec in records:
        if rec.get("digest") != first.get("digest"):
            raise FocuslabError(f"merge: shard {rec['shard'][0]}/{rec['shard'][1]} in {d} comes from a "
                                f"different config or seed than shard {first['shard'][0]}/"
                                f"{first['shard'][1]} in {first_dir}")
        if rec["shard"][1] != first["shard"][1]:
            raise FocuslabError(f"merge: {d} has shards of a {rec['shard'][1]}-way split, "
                                f"{first_dir} of a {first['shard'][1]}-way split")
    n = first["shard"][1]
    where: dict[int, list[Path]] = {}
    for d, rec in records:
        where.setdefault(rec["shard"][0], []).append(d)
    dup = {k: v for k, v in where.items() if len(v) > 1}
    if dup:
        k, v = sorted(dup.items())[0]
        raise FocuslabError(f"merge: shard {k}/{n} appears {len(v)} times ({', '.join(map(str, v))})")
    missing = [k for k in range(1, n + 1) if k not in where]
    if missing:
        raise FocuslabError(f"merge: missing shard(s) {', '.join(f'{k}/{n}' for k in missing)}")
    config = build_scan_config(first["scan"])
    if config.digest() != first["digest"]:
        raise FocuslabError("merge: the shards' config does not rebuild to the same digest "
                            "(different focuslab or numpy version?)")
    chunks = plan_chunks(config)
    source = {}
    for d, rec in records:
        for name in rec["chunks"]:
            if not (d / CHUNKS / f"{name}.parquet").exists():
                raise FocuslabError(f"merge: shard {rec['shard'][0]}/{n} in {d} lacks chunk {name}")
            source[name] = d
    absent = [c.name for c in chunks if c.name not in source]
    if absent:
        raise FocuslabError(f"merge: chunks {', '.join(absent[:3])}{'...' if len(absent) > 3 else ''} "
                            "belong to no shard")
    out = Path(out)
    meta = open_scan_dir(config, out)
    t0 = time.time()
    for c in chunks:
        src = source[c.name] / CHUNKS / f"{c.name}.parquet"
        dst = out / CHUNKS / f"{c.name}.parquet"
        if src.resolve() != dst.resolve():
            atomic_write_bytes(dst, src.read_bytes())
    attempt = {"merged_shards": n, "sources": sorted({str(d) for d, _ in records}),
               "shard_timings": [rec["timings"] for _, rec in sorted(records, key=lambda r: r[1]["shard"][0])],
               "wall_seconds": round(time.time() - t0, 3), "environment": _environment()}
    finish_scan(config, out, meta, chunks, attempt)
    return {"shards": n, "chunks": len(chunks), "out": str(out)}
