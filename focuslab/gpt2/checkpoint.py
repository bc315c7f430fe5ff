"""A GPT-2 run's checkpoints and record: ckpt.pt written atomically at each evaluation, the one before
kept as ckpt.prev.pt; what a run resumes from (ckpt.pt, else ckpt.prev.pt; an unreadable one moved
aside, never deleted); and whether a run directory holds this config's run (gpt2.json)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import FocuslabError
from .config import TrainConfig

CKPT = "ckpt.pt"
PREV = "ckpt.prev.pt"  # the checkpoint before ckpt.pt: what a run resumes from if ckpt.pt is unreadable


def run_state(run: Path, cfg: TrainConfig) -> dict | None:
    """What a run directory holds for ``cfg``: None (nothing), or gpt2.json's record; raises a
    one-line error when it holds a run with a different config."""
    meta_path = Path(run) / "gpt2.json"
    if not meta_path.exists():
        return None
    from ..results import read_json

    from .config import RECOVER_META

    meta = read_json(meta_path, fix=RECOVER_META.format(run=run))
    if meta.get("digest") != cfg.digest():
        raise FocuslabError(f"--out {run} holds a GPT-2 run with a different config (digest {meta.get('digest')} "
                            f"vs {cfg.digest()}); use another --out, or --force to start it over")
    return meta


def is_complete(meta: dict | None, cfg: TrainConfig) -> bool:
    return bool(meta) and meta.get("status") == "complete" and meta.get("iter", -1) >= cfg.max_iters


def _save_checkpoint(obj, run: Path) -> None:
    """ckpt.pt atomically (written beside it, fsynced, renamed over it); the one it replaces becomes
    ckpt.prev.pt, so a ckpt.pt damaged later (a copy cut short, a full disk elsewhere) still leaves
    a checkpoint to resume from.  A failed write leaves both as they were."""
    from ..results import WriteError, atomic_path, write_file

    path = run / CKPT
    try:
        with atomic_path(path) as tmp:
            write_file(tmp, lambda fh: torch.save(obj, fh))  # a full disk: its OSError, not torch's RuntimeError
            if path.exists():
                os.replace(path, run / PREV)
    except (OSError, WriteError) as err:
        kept = f"the checkpoint at iter {_peek_iter(run)} is kept" if (run / CKPT).exists() or (run / PREV).exists() \
            else "no checkpoint was written"
        raise FocuslabError(f"{path}: cannot write the checkpoint ({err.strerror or err}); {kept}") from None


def _peek_iter(run: Path):
    meta = Path(run) / "gpt2.json"
    try:
        return json.loads(meta.read_text()).get("iter", "?")
    except (OSError, ValueError):
        return "?"


def mark_interrupted(run: Path) -> bool:
    """After Ctrl-C under torchrun: a run whose record still says "running" is marked "interrupted"
    at the iteration of its checkpoint.  Rank 0 records that itself when it reaches a safe point;
    when it does not (it was waiting in a collective on a worker that had already stopped, and
    torchrun ended it), the launcher does it here.  The record's ``iter`` is already the
    checkpoint's: "running" is written right after each save.  True when the record was changed."""
    from ..results import write_json

    meta_path = Path(run) / "gpt2.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("status") != "running" or not (Path(run) / "ckpt.pt").exists():
        return False
    write_json({**meta, "status": "interrupted"}, meta_path)
    return True


def _load(path: Path, device):
    """(checkpoint, None) or (None, why it is unreadable) -- never a traceback."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        first = (str(err).strip().splitlines() or [""])[0]
        return None, f"truncated or corrupt: {type(err).__name__}{': ' + first[:160] if first else ''}"
    if not isinstance(ckpt, dict) or not {"model", "optimizer", "iter", "digest"} <= set(ckpt):
        return None, "not a focuslab GPT-2 checkpoint"
    return ckpt, None


def _aside(path: Path) -> Path:
    target = path.with_name(path.name + ".corrupt")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{n}")
        n += 1
    os.replace(path, target)
    return target


def read_checkpoint(run: Path, device="cpu", force: bool = False, repair: bool = True, log=print) -> dict | None:
    """The checkpoint a run resumes from: ckpt.pt, else (unreadable or missing) ckpt.prev.pt; None
    when there is none.  ``repair`` (the one process that owns the directory): an unreadable
    ckpt.pt is moved aside to ckpt.pt.corrupt when the previous checkpoint is good, or, with no good
    checkpoint, when ``force`` asks to start over (else a one-line error that keeps everything)."""
    run = Path(run)
    path, prev = run / CKPT, run / PREV
    bad = []
    for candidate in (path, prev):
        if not candidate.exists():
            continue
        ckpt, why = _load(candidate, device)
        if ckpt is not None:
            if bad and repair:
                for p, reason in bad:
                    log(f"gpt2: {p} is unreadable ({reason}): moved to {_aside(p)}; resuming from {candidate} "
                        f"(iter {ckpt['iter']})")
            elif bad:
                log(f"gpt2: {bad[0][0]} is unreadable; resuming from {candidate} (iter {ckpt['iter']})")
            return ckpt
        bad.append((candidate, why))
    if not bad:
        return None
    first, why = bad[0]
    if force and repair:
        moved = [str(_aside(p)) for p, _ in bad]
        log(f"gpt2: {first} is unreadable ({why}) and there is no earlier checkpoint: moved to {', '.join(moved)}; "
            "--force starts the run over")
        return None
    raise FocuslabError(f"{first} is unreadable ({why}) and there is no earlier good checkpoint; nothing was "
                        f"changed (the run's metrics up to iter {_peek_iter(run)} are kept): --force moves it aside "
                        "and starts the run over")
