"""The results store: tidy parquet tables and JSON metadata, always written atomically.

A scan directory holds
  scan.json        full config, seed, focuslab version, timings, status
  chunks/*.parquet one file per completed chunk (the unit of resumption)
  shards/*.json    one record per completed shard of a sharded scan (focuslab merge reads them)
  runs.parquet     one row per (optimizer, cell, lr) with replicate statistics
  best.parquet     one row per (optimizer, cell) at its best learning rate
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from .errors import FocuslabError

META = "scan.json"
RUNS = "runs.parquet"
BEST = "best.parquet"
CHUNKS = "chunks"
SHARDS = "shards"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (0644 under umask 022)."""
    return 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it.  The file gets the
    mode the umask allows (mkstemp's own 0600 would hide results on shared cluster filesystems)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), new_file_mode())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary path beside ``path`` to write a large file to; renamed over ``path`` (with the
    umask's mode) when the block ends without an error, removed otherwise."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def write_json(obj: dict, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FocuslabError(f"{path} not found") from None
    except (OSError, ValueError) as err:
        raise FocuslabError(f"{path} is unreadable or not JSON: {err}") from None


def read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise FocuslabError(f"{path} not found") from None
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise FocuslabError(f"{path} is not a readable parquet table: {err}") from None


def prepare_out_dir(out: Path) -> Path:
    """Create ``out`` (and chunks/) or explain in one line why it cannot be used."""
    out = Path(out)
    try:
        (out / CHUNKS).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FocuslabError(f"--out {out}: exists and is not a directory") from None
    except OSError as err:
        raise FocuslabError(f"--out {out}: cannot create directory ({err.strerror})") from None
    if not os.access(out, os.W_OK) or not os.access(out / CHUNKS, os.W_OK):
        raise FocuslabError(f"--out {out}: directory is not writable")
    return out


def load_scan(directory: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(metadata, runs, best) of a finished scan, with one-line errors for anything wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FocuslabError(f"results directory not found: {directory}")
    meta = read_json(directory / META)
    if meta.get("kind", "scan") != "scan" or "config" not in meta:
        raise FocuslabError(f"{directory / META} is not focuslab scan metadata")
    if meta.get("status") != "complete":
        raise FocuslabError(f"scan in {directory} is not complete (status {meta.get('status')!r}); "
                            "re-run the same `focuslab scan` command to finish it")
    return meta, read_parquet(directory / RUNS), read_parquet(directory / BEST)


def open_results_dir(out: Path, meta_name: str, digest: str, fresh_meta: dict, work_dir: str,
                     outputs=(), force: bool = False, what: str = "scan") -> dict:
    """Prepare ``out`` for a run whose config has ``digest``; return its metadata.

    Same digest: the existing metadata (the run resumes).  A different digest is refused in one line
    unless ``force``, which removes the stale work units (``work_dir``) and ``outputs``.  A new
    directory gets ``fresh_meta`` written atomically.
    """
    import shutil

    out = prepare_out_dir(out)
    (out / work_dir).mkdir(exist_ok=True)
    meta_path = out / meta_name
    if meta_path.exists():
        old = read_json(meta_path)
        if old.get("digest") == digest:
            return old
        if not force:
            raise FocuslabError(f"--out {out} holds a {what} with a different config (digest "
                                f"{old.get('digest')} vs {digest}); use another --out or --force to replace it")
        shutil.rmtree(out / work_dir, ignore_errors=True)
        (out / work_dir).mkdir()
        for name in outputs:
            (out / name).unlink(missing_ok=True)
    write_json(fresh_meta, meta_path)
    return fresh_meta
