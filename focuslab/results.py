"""The results store: tidy parquet tables and JSON metadata, always written atomically.

A scan directory holds
  scan.json        full config, seed, focuslab version, timings, status
  chunks/*.parquet one file per completed chunk (the unit of resumption)
  shards/*.json    one record per completed shard of a sharded scan (focuslab merge reads them)
  runs.parquet     one row per (optimizer, cell, lr) with replicate statistics
  best.parquet     one row per (optimizer, cell) at its best learning rate
  .lock            held (flock) by the process computing there (``hold``), with its pid and command
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
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


class WriteError(FocuslabError):
    """A file could not be written (a full disk, no permission): one line naming it.  ``strerror``
    is the system's own words, for callers that say more about what is kept."""

    strerror: str = ""


def _write_error(path: Path, err: OSError) -> WriteError:
    import errno

    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
           errno.EACCES: "permission denied", errno.EROFS: "the file system is read-only"}.get(
        err.errno, err.strerror or str(err))
    out = WriteError(f"cannot write {path}: {why}; what was finished before is kept (rerun the same command "
                     "to resume once there is room)")
    out.strerror = err.strerror or str(err)
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it (``atomic_path``).  The
    file gets the mode the umask allows (mkstemp's own 0600 would hide results on shared cluster
    filesystems).  A full disk or a refused write is a one-line WriteError; no partial file is left."""
    atomic_write_with(path, lambda fh: fh.write(data))


def atomic_write_with(path: Path, write) -> None:
    """``write(fh)`` into a file beside ``path`` (``write_file``), renamed over it once complete: what
    ``atomic_write_bytes`` does, for writers that stream (``torch.save``)."""
    with atomic_path(path) as tmp:
        write_file(tmp, write)


class _Watched:
    """A binary file whose OS errors are kept: torch.save reports a write that failed (a full disk)
    as a RuntimeError ('unexpected pos ...') with the OSError only in its context."""

    def __init__(self, fh):
        self._fh, self.error = fh, None

    def _call(self, name, *args):
        try:
            return getattr(self._fh, name)(*args)
        except OSError as err:
            self.error = self.error or err
            raise

    def write(self, data):
        return self._call("write", data)

    def flush(self):
        return self._call("flush")

    def __getattr__(self, name):
        return getattr(self._fh, name)


def write_file(path: Path, write) -> None:
    """``write(fh)`` into ``path``, flushed and fsynced.  A write the system refused (a full disk, a
    quota, a read-only mount) raises that OSError, whatever exception the writer turned it into,
    so that ``atomic_path`` makes it a one-line WriteError."""
    with open(path, "wb") as raw:
        fh = _Watched(raw)
        try:
            write(fh)
            fh.flush()
            os.fsync(raw.fileno())
        except Exception as err:
            if _interrupted(err):  # Ctrl-C mid-write, then the writer's cleanup failed on the torn file
                raise KeyboardInterrupt from None  # (torch.save: 'unexpected pos'): the interrupt it was
            if fh.error is not None and not isinstance(err, OSError):
                raise fh.error from None
            raise


def _interrupted(err: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the exceptions ``err`` was raised while handling."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__context__
    return False


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary path beside ``path`` to write a large file to; renamed over ``path`` (with the
    umask's mode) when the block ends without an error, removed otherwise."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _write_error(path, err) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _write_error(path, err) from None
        raise


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def write_json(obj: dict, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def _then(fix: str | None) -> str:
    return f"; {fix}" if fix else ""


def read_json(path: Path, fix: str | None = None) -> dict:
    """A JSON file, or a one-line error that ends with ``fix``: what recovers it."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FocuslabError(f"{path} not found{_then(fix)}") from None
    except (OSError, ValueError) as err:
        raise FocuslabError(f"{path} is unreadable or not JSON ({err}){_then(fix)}") from None


def read_parquet(path: Path, fix: str | None = None) -> pd.DataFrame:
    """A parquet table, or a one-line error that ends with ``fix``: what recovers it."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise FocuslabError(f"{path} not found{_then(fix)}") from None
    except Exception as err:  # pyarrow raises several types for corrupt files
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise FocuslabError(f"{path} is not a readable parquet table ({first}){_then(fix)}") from None


def rerun(command: str, directory: Path, force: bool = False, rebuilds: str = "") -> str:
    """The command that recovers a damaged results directory, as an error message ends with it."""
    how = f"rerun the `focuslab {command}` command that wrote it (the same flags and --out {directory})"
    return f"{how} with --force" if force else f"{how}: it rebuilds {rebuilds}" if rebuilds else how


def make_dir(path: Path, shown: Path | None = None) -> Path:
    """Create ``path`` (and its parents), or say in one line naming --out ``shown`` (default
    ``path``) why it cannot be made: a file in the way, a read-only file system, no permission."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FocuslabError(f"--out {shown or path}: exists and is not a directory") from None
    except OSError as err:
        raise FocuslabError(f"--out {shown or path}: cannot create ({err.strerror})") from None
    return path


def prepare_out_dir(out: Path) -> Path:
    """Create ``out`` (and chunks/) or explain in one line why it cannot be used."""
    out = Path(out)
    make_dir(out / CHUNKS, out)
    if not os.access(out, os.W_OK) or not os.access(out / CHUNKS, os.W_OK):
        raise FocuslabError(f"--out {out}: directory is not writable")
    return out


def scan_meta(directory: Path) -> dict:
    """The metadata of a finished scan, with one-line errors that say what recovers it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FocuslabError(f"results directory not found: {directory}")
    if not (directory / META).exists():
        other = kind_of(directory)
        raise FocuslabError(f"{directory} holds no scan (no {META})" + (f" but a {WORDS[other]}" if other else "")
                            + ": give the directory a `focuslab scan` wrote")
    lost = "the scan's config is lost with it, so its chunk files cannot be checked: " + rerun("scan", directory, True)
    meta = read_json(directory / META, fix=lost)
    if meta.get("kind", "scan") != "scan" or "config" not in meta:
        raise FocuslabError(f"{directory / META} is not focuslab scan metadata; {lost}")
    if meta.get("status") != "complete":
        raise FocuslabError(f"scan in {directory} is not complete (status {meta.get('status')!r}); "
                            "re-run the same `focuslab scan` command to finish it")
    return meta


def load_scan(directory: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(metadata, runs, best) of a finished scan, with one-line errors for anything wrong."""
    meta = scan_meta(directory)
    fix = rerun("scan", directory, rebuilds=f"{RUNS} and {BEST} from its chunk files")
    return meta, read_parquet(Path(directory) / RUNS, fix), read_parquet(Path(directory) / BEST, fix)


#: The metadata file that makes a directory a results directory of each kind.
KINDS = {"scan": META, "mnist": "mnist.json", "gpt2": "gpt2.json", "bridge": "bridge.json"}
WORDS = {"scan": "scan", "mnist": "MNIST study", "gpt2": "GPT-2 run", "bridge": "bridge"}


def kind_of(directory: Path) -> str | None:
    """The kind of results ``directory`` holds (by its metadata file), or None."""
    for kind, name in KINDS.items():
        if (Path(directory) / name).exists():
            return kind
    return None


def claim_dir(out: Path, kind: str, own=()) -> bool:
    """Check that ``out`` may hold results of ``kind``: it is new, empty, or already of that kind.
    Another command's directory, or a directory of other files, is refused in one line (``own``:
    further names a run of this kind may leave before its metadata file, e.g. a GPT-2 run's
    run-config.json).  Returns whether the directory is new (so that a run that fails before
    computing anything removes it)."""
    out = Path(out)
    if not out.exists():
        return True
    if not out.is_dir():
        raise FocuslabError(f"--out {out}: exists and is not a directory")
    other = kind_of(out)
    if other is not None and other != kind:
        raise FocuslabError(f"--out {out} holds a {WORDS[other]} ({KINDS[other]}); give the {WORDS[kind]} a "
                            "directory of its own")
    foreign = [p.name for p in out.iterdir() if not _ours(p) and p.name not in own]
    if other is None and foreign:
        raise FocuslabError(f"--out {out} holds files that are not focuslab results ({', '.join(sorted(foreign)[:3])}"
                            f"{', ...' if len(foreign) > 3 else ''}); give an empty or new directory")
    return False


def _ours(path: Path) -> bool:
    """Files a run directory may hold before its metadata: its config (the SLURM driver writes
    scan.toml there first), job scripts and logs (the driver's slurm/ directory)."""
    if path.is_dir():
        return path.name in ("slurm", "logs")
    return path.suffix in (".toml", ".sh", ".log", ".out", ".err") or path.name.startswith(".")


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for the settings that differ between two configs (nested keys dotted)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "(unset)"), new.get(key, "(unset)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            def short(v):
                text = json.dumps(v, default=str)
                return text if len(text) <= 40 else text[:37] + "..."
            out.append(f"{prefix}{key}: {short(a)} -> {short(b)}")
    return out


def check_results_dir(out: Path, meta_name: str, digest: str, fresh_meta: dict, *, force: bool = False,
                      what: str = "scan", kind: str | None = None) -> dict | None:
    """What ``open_results_dir`` refuses, checked without writing (a dry run calls it too): ``out``
    must be new, empty or of this ``kind`` (``claim_dir``), and hold this very config (``digest``)
    unless ``force``.  Returns the metadata there is to resume (None: none, or ``force``)."""
    claim_dir(out, kind or next((k for k, v in KINDS.items() if v == meta_name), "scan"))
    meta_path = Path(out) / meta_name
    if force or not meta_path.exists():  # --force replaces it unread (it may be the damaged file it recovers from)
        return None
    old = read_json(meta_path, fix=f"the config of the work in {out} cannot be checked against this one: rerun "
                                   "with --force to start over, or use another --out")
    if old.get("digest") == digest:
        return old
    diff = differences(old.get("config") or {}, fresh_meta.get("config") or {})
    said = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "") if diff else \
        f"digest {old.get('digest')} vs {digest}"
    raise FocuslabError(f"--out {out} holds a {what} with a different config ({said}); use another --out "
                        "or --force to replace it")


def open_results_dir(out: Path, meta_name: str, digest: str, fresh_meta: dict, *, work_dir: str,
                     outputs=(), force: bool = False, what: str = "scan", kind: str | None = None) -> dict:
    """Prepare ``out`` for a run whose config has ``digest``; return its metadata.

    ``out`` must be new, empty or of this ``kind`` (``claim_dir``).  Same digest: the existing
    metadata (the run resumes).  A different digest is refused in one line that names the settings
    that differ, unless ``force`` (``check_results_dir``).  ``force`` always starts over: it removes
    the work units (``work_dir``) and ``outputs`` and writes ``fresh_meta``.  A new directory gets
    ``fresh_meta`` written atomically.
    """
    import shutil

    old = check_results_dir(out, meta_name, digest, fresh_meta, force=force, what=what, kind=kind)
    out = prepare_out_dir(out)
    (out / work_dir).mkdir(exist_ok=True)
    if old is not None:
        return old
    if force and (out / meta_name).exists():
        shutil.rmtree(out / work_dir, ignore_errors=True)
        (out / work_dir).mkdir()
        for name in outputs:
            (out / name).unlink(missing_ok=True)
    write_json(fresh_meta, out / meta_name)
    return fresh_meta


LOCK = ".lock"


@contextlib.contextmanager
def hold(out: Path, what: str = "scan", part: str | None = None):
    """Hold results directory ``out`` for this process while it computes there; another focuslab
    process that wants it is refused in one line that names the holder (pid, host, start, command),
    instead of computing everything a second time beside it.  ``part`` (a shard, "3-of-8"): several
    processes may hold different parts at once (SLURM array tasks write shards into one directory),
    but not the same part, nor a part while the whole is held.  The locks are flock()s, released
    by the system when a holder dies, even by kill -9; where the file system has no locks (some
    cluster mounts), the directory is used unlocked.  Creates ``out``."""
    import fcntl
    import socket
    import sys

    out = make_dir(out)
    me = (f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%H:%M:%S')}: "
          + " ".join(["focuslab", *sys.argv[1:]])[:120])
    files = []

    def take(name: str, mode: int, whose: str) -> bool:
        fh = open(out / name, "a+")
        try:
            fcntl.flock(fh.fileno(), mode | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or whose
            fh.close()
            for f in files:
                f.close()
            raise FocuslabError(f"--out {out} is in use by another focuslab {what} ({holder}); wait for it to "
                                "finish, or stop it and rerun this command (it resumes what was finished)") from None
        except OSError:  # no locks on this file system
            fh.close()
            return False
        files.append(fh)
        if mode == fcntl.LOCK_EX:
            fh.seek(0)
            fh.truncate()
            fh.write(me + "\n")
            fh.flush()
        return True

    try:
        if take(LOCK, fcntl.LOCK_SH if part else fcntl.LOCK_EX, "its shards are being computed") and part:
            take(f"{LOCK}-{part}", fcntl.LOCK_EX, f"shard {part}")
        yield out
    finally:
        for fh in files:
            fh.close()  # closing releases the lock


#: Where the unit runner keeps the work of units in flight (progress reports, checkpoints).
INFLIGHT = ".inflight"


def discard_if_empty(out: Path, created: bool, work_dir: str) -> None:
    """After a run that failed: remove ``out`` if this run created it and it holds no work -- no
    finished unit, and no in-flight checkpoint (``WORK/.inflight/*.pt``: an MNIST unit stopped
    half-way resumes from it) -- so nothing is lost and nothing empty is left behind."""
    import shutil

    out = Path(out)
    if not created or not out.is_dir():
        return
    work = out / work_dir
    done = [*work.glob("*.parquet"), *(work / INFLIGHT).glob("*.pt")] if work.is_dir() else []
    if not done:
        shutil.rmtree(out, ignore_errors=True)


def readable_table(path: Path) -> bool:
    """Whether ``path`` is a parquet file that reads (a truncated or foreign file does not)."""
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
        return True
    except Exception:  # pyarrow raises several types for truncated or foreign files
        return False


RESULTS = Path("results")


def default_out(name: str, digest: str, preset_digest: str, adhoc: str | None = None) -> Path:
    """results/NAME for a run of exactly a preset (or config file) NAME, else results/ADHOC-DIGEST8
    (ADHOC defaults to NAME): the same command finds (and resumes) its own directory, and a
    different one never lands in another's."""
    return RESULTS / (name if digest == preset_digest else f"{adhoc or name}-{digest[:8]}")
