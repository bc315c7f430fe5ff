"""The bridge's settings and inputs, checked before anything is written: the MNIST study and GPT-2
runs (made with --diagnostics-every), and the toy map (a finished scan with a noise axis, or the
scan of --toy-config to run into --toy)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import FocuslabError
from ..options import setting

META = "bridge.json"
TABLES = ("toy.parquet", "mnist.parquet", "mnist_toy.parquet", "boundary.parquet", "gpt2.parquet",
          "gpt2_toy.parquet", "stability.parquet")
#: The real runs' optimizers as the toy names them.
TOY_NAME = {"adamw": "adam", "adam": "adam", "signum": "signum", "focus": "focus"}
TITLE = {"adam": "Adam", "signum": "Signum", "focus": "FOCUS"}


@dataclass(frozen=True)
class BridgeSettings:
    """The bridge command's settings, declared once (its flags are generated from these fields)."""

    mnist: str = setting(None, "an MNIST study run with --diagnostics-every (adamw and signum): the toy read at "
                               "each batch size's sigma_equiv", metavar="RUN_DIR")
    gpt2: tuple = setting(None, "a GPT-2 run with --diagnostics-every (repeatable): the toy read at the runs' "
                                "sigma_equiv", metavar="RUN_DIR", multiple=True)
    toy: str = setting("results/bridge-toy", "the toy map: a finished scan with a noise axis; when the directory "
                                             "holds no scan, --toy-config is scanned into it first", metavar="DIR")
    toy_config: str = setting("bridge-toy", "the scan run into --toy when it holds none: a scan preset or a TOML "
                                            "file with a [scan] table", metavar="FILE|PRESET")
    stability_replicates: int = setting(20, "toy Adam trajectories per sharpness for the stability number "
                                            "S = lr x lambda_max(P^-1/2 H P^-1/2) (0: skip)", metavar="N")
    out: str = setting("results/bridge", "where the bridge's tables go (`focuslab plot DIR` draws them)",
                       metavar="DIR")

    def validate(self) -> "BridgeSettings":
        if not self.mnist and not self.gpt2:
            raise FocuslabError("focuslab bridge: give --mnist RUN_DIR and/or --gpt2 RUN_DIR (runs made with "
                                "--diagnostics-every N)")
        if self.stability_replicates < 0:
            raise FocuslabError(f"--stability-replicates: must be >= 0, got {self.stability_replicates}")
        return self


# ---------------------------------------------------------------------------------------------
# inputs, checked before anything is written

def _kind_word(directory: Path) -> str:
    from ..results import KINDS, WORDS, kind_of

    kind = kind_of(directory)
    return f"a {WORDS[kind]} ({KINDS[kind]})" if kind else "no focuslab results"


def _diagnosed(flag: str, directory, kind: str) -> tuple[Path, dict, pd.DataFrame]:
    """(path, metadata, diagnostics) of a finished run of ``kind`` measured with --diagnostics-every."""
    from ..results import KINDS, WORDS, kind_of, read_json, read_parquet

    path = Path(directory)
    if not path.is_dir():
        raise FocuslabError(f"{flag} {path}: no such directory")
    if kind_of(path) != kind:
        raise FocuslabError(f"{flag} {path} holds {_kind_word(path)}, not a {WORDS[kind]}")
    meta = read_json(path / KINDS[kind])
    if meta.get("status") != "complete":
        raise FocuslabError(f"{flag} {path}: the {WORDS[kind]} is not complete (status {meta.get('status')!r}); "
                            "finish it first (re-run its command)")
    if not (path / "diagnostics.parquet").exists():
        raise FocuslabError(f"{flag} {path}: no diagnostics.parquet (the {WORDS[kind]} was run without "
                            "--diagnostics-every N)")
    diag = read_parquet(path / "diagnostics.parquet")
    if "sigma_equiv" not in diag or not (diag["step"] > 0).any():
        raise FocuslabError(f"{flag} {path}: diagnostics.parquet has no sigma_equiv measured after step 0")
    return path, meta, diag


def _mnist_input(directory) -> dict:
    from ..results import read_parquet

    path, meta, diag = _diagnosed("--mnist", directory, "mnist")
    best = read_parquet(path / "best.parquet")
    for opt in ("adamw", "signum"):
        if opt not in set(best["optimizer"]) or opt not in set(diag["optimizer"]):
            raise FocuslabError(f"--mnist {path}: no {opt} units with diagnostics (the bridge compares adamw and "
                                "signum: run the study with --optimizers adamw,signum)")
    return {"path": path, "meta": meta, "diagnostics": diag, "best": best}


def _gpt2_input(directory) -> dict:
    path, meta, diag = _diagnosed("--gpt2", directory, "gpt2")
    final = (meta.get("final") or {}).get("val_loss")
    if final is None:
        raise FocuslabError(f"--gpt2 {path}: gpt2.json records no final validation loss")
    optimizer = str(meta["config"]["optimizer"]).split(":")[0]
    return {"path": path, "meta": meta, "diagnostics": diag, "final": float(final), "optimizer": optimizer}


def _toy_config(settings: BridgeSettings):
    from ..config import build_scan_config, load_toml

    try:
        return build_scan_config(load_toml(settings.toy_config, "scan"))
    except FocuslabError as err:
        raise FocuslabError(f"--toy-config {settings.toy_config}: {err}") from None


def _check_map(config, where: str, need: set) -> None:
    """A toy map the bridge can read: a noise axis of positive values, sharpness the only other
    scanned axis, the optimizers it compares."""
    noise = [v for v in config.axes["noise"].values if v > 0]
    if len(noise) < 2:
        raise FocuslabError(f"{where}: a scan without a noise axis (noise {config.axes['noise'].spec}); the bridge "
                            "reads the toy along sigma: scan a --noise grid of at least two positive values")
    other = [a for a in config.scanned_axes if a not in ("sharpness", "noise", "lr")]
    if other:
        raise FocuslabError(f"{where}: the scan also varies {', '.join(other)}; the bridge reads a sharpness x noise "
                            "map (one value of every other axis)")
    names = {e.name for e in config.entries}  # a built-in's name; an external class's is a dotted path
    if need - names:
        raise FocuslabError(f"{where}: no {', '.join(sorted(need - names))} on the map (optimizers "
                            f"{', '.join(config.optimizers)}); the bridge compares {', '.join(sorted(need))}")


def _toy_input(settings: BridgeSettings, need: set) -> dict:
    """What --toy holds (a finished map, an unfinished scan of --toy-config to resume, or nothing: the
    scan of --toy-config to run), checked."""
    from ..results import META as SCAN_META
    from ..results import kind_of, read_json
    from ..scan import config_from_meta

    path = Path(settings.toy)
    if path.exists() and not path.is_dir():
        raise FocuslabError(f"--toy {path}: exists and is not a directory")
    kind = kind_of(path) if path.is_dir() else None
    if kind not in (None, "scan"):
        raise FocuslabError(f"--toy {path} holds {_kind_word(path)}, not a toy scan")
    if kind == "scan":
        meta = read_json(path / SCAN_META)
        config = config_from_meta(meta)
        _check_map(config, f"--toy {path}", need)
        if meta.get("status") == "complete":
            return {"path": path, "config": config, "run": False}
        if config.digest() != _toy_config(settings).digest():
            raise FocuslabError(f"--toy {path}: an unfinished scan of another config than --toy-config "
                                f"{settings.toy_config}; finish it with its own `focuslab scan` command")
        return {"path": path, "config": config, "run": True}
    config = _toy_config(settings)
    _check_map(config, f"--toy-config {settings.toy_config}", need)
    return {"path": path, "config": config, "run": True}


def _entry_labels(config) -> dict:
    """toy name (adam, signum, focus) -> the map's label of that built-in (the first entry)."""
    out = {}
    for e in config.entries:
        if e.name in TITLE and e.name not in out:  # the built-ins by name (a class's name is a dotted path)
            out[e.name] = e.label
    return out


