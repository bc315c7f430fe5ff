"""Configuration shared by every command: grids, TOML presets, the layered merge, and the toy
scan's frozen config.  Imports neither numba nor torch.

* A grid is ``START:STOP:NUM`` (linear, endpoints included), ``START:STOP:NUM:log`` (log-spaced),
  a comma list ``1,10,100``, or one number.  Numbers may use ``pi`` (``pi/6``).
* Every command merges its settings the same way: built-in defaults < ``--config`` file or preset
  < command-line flags (``layered``).  Unknown keys are errors that list the known ones.
* Optimizer lists follow one grammar for every command (focuslab.optimizers.spec):
  ``adam,signum,focus:gamma=0.4,pytorch_optimizer.AdaBelief:betas=(0.9,0.95)``;
  ``--opt-param focus.gamma=0.4`` (or a ``[scan.optimizer.focus]`` table) sets a value for every
  ``focus`` entry that does not set it itself.

``ScanConfig`` (the toy scans' frozen config) lives here; MNIST and GPT-2 keep theirs beside their
engines and build them with ``layered``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import numpy as np

from . import axes
from .errors import FocuslabError
from .grids import MAX_GRID, Grid, parse_grid  # noqa: F401  (re-exported: every command parses grids here)
from .optimizers.entries import digest_view, study_record
from .options import setting
from .values import jsonable, parse_number  # noqa: F401  (parse_number re-exported)

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

def check_axis(name: str, grid: Grid) -> Grid:
    """Values of a toy axis must be finite, distinct and in the axis's range (focuslab.axes).
    Returns the grid with its values in ascending order (``3:0:5`` is the same axis as ``0:3:5``:
    maps and tables are laid out by value, never mirrored)."""
    axis = axes.BY_NAME[name]
    if len(set(grid.values)) != len(grid.values):
        raise FocuslabError(f"{axis.flag}: repeated values in {grid.spec!r}")
    for v in grid.values:
        why = axis.check(v)
        if why:
            raise FocuslabError(f"{axis.flag}: {v:g} {why}")
    return Grid(grid.spec, tuple(sorted(grid.values)), grid.scale)


# --- TOML files and presets ------------------------------------------------------------------
def _preset_root():
    return resources.files("focuslab.presets")


def list_presets(section: str | None = None) -> list[str]:
    """Names of the shipped presets (configs/*.toml), only those with a [section] table if given."""
    names = []
    for p in sorted(_preset_root().iterdir(), key=lambda p: p.name):
        if not p.name.endswith(".toml"):
            continue
        if section is not None:
            with p.open("rb") as fh:
                if section not in tomllib.load(fh):
                    continue
        names.append(p.name[:-5])
    return names


def preset_path(name: str, section: str | None = None) -> Path:
    """Path of a preset TOML shipped with focuslab (configs/NAME.toml)."""
    path = Path(str(_preset_root().joinpath(f"{name}.toml")))
    if not path.is_file() or (section and name not in list_presets(section)):
        what = f"{section} preset" if section else "preset"
        raise FocuslabError(f"no {what} named {name!r} (available: {', '.join(list_presets(section))})")
    return path


def names_preset(path_or_preset: str | Path) -> bool:
    """Whether a --config value names a preset (not a file): no such file, no slash, no .toml.  Only
    a *file* of that name shadows a preset: a folder ``default/`` in the current directory is not a
    config file, so ``--config default`` (and every command's default preset) still loads."""
    text = str(path_or_preset)
    return not Path(text).is_file() and "/" not in text and not text.endswith(".toml")


def load_toml(path_or_preset: str | Path, section: str | None = None) -> dict:
    """Read a config file, or a preset by name; returns the table (or one section of it)."""
    path = Path(path_or_preset)
    if names_preset(path_or_preset):
        if path.is_dir() and str(path_or_preset) not in list_presets():
            raise FocuslabError(f"cannot read config {path}: is a directory (give a TOML file or a preset: "
                                f"{', '.join(list_presets(section))})")
        path = preset_path(str(path_or_preset), section)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise FocuslabError(f"config file not found: {path}") from None
    except (OSError, IsADirectoryError) as err:
        raise FocuslabError(f"cannot read config {path}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise FocuslabError(f"config {path} is not valid TOML: {err}") from None
    if section is not None:
        if section not in data:
            raise FocuslabError(f"config {path} has no [{section}] table")
        data = data[section]
    return data


RENAMED = {"theta": "phi"}  # old key -> new key, for a helpful error


def layered(known, *layers, what: str = "config") -> dict:
    """Merge dicts in order (defaults, then a file or preset, then flags): later layers win, None
    means "not given".  Keys outside ``known`` are errors that list the known ones."""
    known = set(known)
    merged: dict = {}
    for layer in layers:
        unknown = set(layer or {}) - known
        for key in sorted(unknown):
            if key in RENAMED and RENAMED[key] in known:
                raise FocuslabError(f"{what} key {key!r} was renamed {RENAMED[key]!r} "
                                    f"({axes.BY_NAME[RENAMED[key]].doc})")
        if unknown:
            raise FocuslabError(f"unknown {what} key(s): {', '.join(sorted(unknown))} "
                                f"(known: {', '.join(sorted(known))})")
        merged.update({k: v for k, v in (layer or {}).items() if v is not None})
    return merged


def parse_int(value, key: str, low: int) -> int:
    """An integer >= low from a config value or flag; errors name the flag."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        raise FocuslabError(f"{flag}: expected an integer, got {value!r}")
    if not isinstance(value, int):
        try:
            value = int(str(value).strip(), 10)
        except ValueError:
            raise FocuslabError(f"{flag}: expected an integer, got {value!r}") from None
    if value < low:
        raise FocuslabError(f"{flag}: must be >= {low}, got {value}")
    return value


def config_digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StudyConfig:
    """What every command's frozen config shares (mixed into its dataclass): the study's optimizer
    entries, its record (``to_dict``, what a results directory keeps) and ONE digest function: the
    hash of ``digest_dict()`` (what determines the numbers; by default the whole record) as
    ``config_digest`` writes it, external optimizers seen by their code and settings only
    (focuslab.optimizers.digest_view).  A rerun with the same digest resumes; another is refused.
    The dataclass it is mixed into has the field ``entries`` (OptimizerEntry, in order)."""

    @property
    def optimizers(self) -> tuple[str, ...]:
        """Labels of the optimizers (the tables' ``optimizer`` column)."""
        return tuple(e.label for e in self.entries)

    def entry(self, label: str):
        return next(e for e in self.entries if e.label == label)

    def to_dict(self) -> dict:
        raise NotImplementedError

    def digest_dict(self) -> dict:
        return self.to_dict()

    def digest(self) -> str:
        return config_digest(digest_view(self.digest_dict()))


# --- the toy scan's config --------------------------------------------------------------------
_GRID = "a grid: START:STOP:NUM, START:STOP:NUM:log, a comma list, or one value"


def optimizers_setting(builtins: str = "adam, signum, focus, sgd, lion"):
    """The ``optimizers`` setting of a study (the same grammar in every command)."""
    return setting(None, f"optimizer specs, comma separated: built-ins ({builtins}), module.Class, file.py:Class or "
                         "pytorch_optimizer names; settings after colons (focus:gamma=0.4)", metavar="LIST")


def opt_param_setting(section: str):
    """The per-optimizer settings of a study: ``--opt-param`` or a ``[SECTION.optimizer.NAME]`` table."""
    return setting(None, "a setting for every entry of an optimizer that does not set it itself, e.g. "
                         f"focus.gamma=0.4 (repeatable; a config file's [{section}.optimizer.NAME] table)",
                   metavar="OPT.SETTING=VALUE", multiple=True, name="--opt-param")


@dataclass(frozen=True)
class ScanSettings:
    """The keys of a [scan] table and the scan's flags, declared once (defaults: preset ``default``)."""

    sharpness: str = setting(None, f"valley sharpness a; {_GRID}", metavar="GRID")
    noise: str = setting(None, f"std σ of the N(1, σ²) gradient factors; {_GRID}", metavar="GRID")
    weight_decay: str = setting(None, f"weight decay ω; {_GRID}", metavar="GRID")
    phi: str = setting(None, f"valley angle φ in radians (may use pi); {_GRID}", metavar="GRID")
    c: str = setting(None, f"slope c along the valley floor; {_GRID}", metavar="GRID")
    lr: str = setting(None, f"learning rates: every one is run, each optimizer judged at its best; {_GRID}",
                      metavar="GRID")
    optimizers: str = optimizers_setting()
    optimizer: dict = opt_param_setting("scan")
    replicates: int = setting(None, "trajectories per (cell, optimizer, lr)", metavar="N")
    steps: int = setting(None, "optimizer steps per trajectory", metavar="N")
    seed: int = setting(None, "base seed of every random stream", metavar="N")
    chunk_steps: int = setting(None, "work per resumable chunk, lanes x steps (fixes the chunk layout)", metavar="N")
    tune: dict = setting(None, "tune OPT's settings too: its default space (--tune focus), a grid per setting "
                               "(--tune adam.beta1=0.8,0.9,0.99), or its own lr range (--tune adam.lr=1e-4:1:20:log); "
                               "repeatable; a config file's [scan.tune.OPT] table", metavar="OPT[.SETTING=GRID]",
                         multiple=True)
    budget: int = setting(None, "trials per tuned optimizer (points of lr x settings), drawn by one scrambled Sobol "
                                "design from each one's space; none: every point", metavar="N")
    design_seed: int = setting(None, "seed of the --budget design", metavar="N")


SCAN_SCALARS = ("replicates", "steps", "seed", "chunk_steps")
#: Fewest replicates of a scan: a standard error needs two.
MIN_REPLICATES = 2
SCAN_KEYS = {f.name for f in fields(ScanSettings)}
#: Versions of what determines a scan's numbers beyond its config; part of the digest, so a scan
#: directory written by an engine that would give other numbers or another chunk layout is never
#: resumed with this one.  generator: the normal generator (focuslab.toy.rng.GENERATOR_VERSION).
ENGINE = {"generator": 1, "chunk_layout": 2}


@dataclass(frozen=True)
class ScanConfig(StudyConfig):
    """Everything that determines a scan's numbers (and nothing that does not, like --jobs).  Its
    values come from build_scan_config (preset ``default`` < file < flags): no defaults here."""

    axes: dict  # axis name -> Grid (all of focuslab.axes.AXES)
    entries: tuple  # OptimizerEntry, in the order given
    replicates: int
    steps: int
    seed: int
    chunk_steps: int  # target work per chunk (lanes x steps); fixes the chunk layout
    tuning: object = None  # focuslab.tuning.Tuning, or None when only lrs are scanned

    def trials(self, label: str) -> tuple:
        """The trials of optimizer ``label`` (focuslab.tuning.Trial): its tuned trials, else one per
        lr of the lr axis."""
        from .tuning import lr_trials

        if self.tuning is not None and label in self.tuning.spaces:
            return self.tuning.trials[label]
        return lr_trials(self.axes["lr"].values)

    @property
    def scanned_axes(self) -> list[str]:
        """Physical axes with more than one value, in CELL_AXES order."""
        return [a for a in axes.CELL_NAMES if len(self.axes[a]) > 1]

    def to_dict(self) -> dict:
        return {
            **{name: self.axes[name].spec for name in axes.AXIS_NAMES},
            "values": {name: list(self.axes[name].values) for name in axes.AXIS_NAMES},
            "scales": {name: self.axes[name].scale for name in axes.AXIS_NAMES},
            **study_record(self.entries),
            "replicates": self.replicates, "steps": self.steps, "seed": self.seed,
            "chunk_steps": self.chunk_steps, "engine": dict(ENGINE),
            # only where something is tuned, so that other scans keep their digests
            **({"tuning": self.tuning.record()} if self.tuning is not None else {}),
        }

    def digest_dict(self) -> dict:
        """Everything that determines the numbers: grid values, not their spelling."""
        d = self.to_dict()
        for name in axes.AXIS_NAMES:
            d.pop(name)
        d.pop("scales")
        for space in d.get("tuning", {}).get("spaces", {}).values():
            for dim in space.values():
                if isinstance(dim, dict):
                    dim.pop("spec", None)
        return d

    @property
    def n_cells(self) -> int:
        return int(np.prod([len(self.axes[a]) for a in axes.CELL_NAMES]))

    def shape_text(self) -> str:
        """The work's shape in words: "2400 cells x 3 optimizers x 20 lrs x 20 replicates", or with
        tuned optimizers their trials ("adam 52 trials (32 by the design), signum 20 lrs")."""
        if self.tuning is None:
            return (f"{self.n_cells} cells x {len(self.entries)} optimizers x {len(self.axes['lr'])} lrs x "
                    f"{self.replicates} replicates")
        parts = []
        for label in self.optimizers:
            trials = self.trials(label)
            if label in self.tuning.spaces:
                parts.append(f"{label} {len(trials)} trials ({sum(t.design for t in trials)} by the design)")
            else:
                parts.append(f"{label} {len(trials)} lrs")
        return f"{self.n_cells} cells x ({', '.join(parts)}) x {self.replicates} replicates"

    def total_steps(self) -> int:
        return self.n_cells * self.replicates * self.steps * sum(len(self.trials(e.label)) for e in self.entries)


def _optimizer_tables(layer: dict | None, section: str = "scan") -> dict:
    """A layer's ``[SECTION.optimizer.NAME]`` tables, checked to be tables."""
    value = (layer or {}).get("optimizer")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise FocuslabError(f"[{section}.optimizer] must hold one table per optimizer, e.g. "
                            f"[{section}.optimizer.focus]")
    return value


def build_scan_config(file_values: dict | None = None, overrides: dict | None = None) -> ScanConfig:
    """Merge preset ``default`` < file values < overrides, validate, and freeze.

    ``overrides`` uses the same keys as the TOML [scan] table; ``optimizer`` maps an optimizer to
    a dict of hyperparameters (what ``--opt-param`` gives).
    """
    from .optimizers import parse_list
    from .tuning import resolve, tune_tables

    base = load_toml("default", "scan")
    layers = [base, file_values or {}, overrides or {}]
    tables = [_optimizer_tables(layer) for layer in layers]
    tune: dict = {}
    for layer in layers:
        for opt, table in tune_tables(layer).items():
            tune.setdefault(opt, {}).update(table)
    opt_params: dict = {}
    for table in tables[1:]:
        for opt, params in table.items():
            opt_params.setdefault(opt, {}).update(params)
    merged = layered(SCAN_KEYS, *layers, what="scan config")
    grids = {}
    for name in axes.AXIS_NAMES:
        grids[name] = check_axis(name, parse_grid(merged[name], name))
    entries = parse_list(merged["optimizers"], opt_params, base_params=tables[0])
    ints = {key: parse_int(merged[key], key, low)
            for key, low in (("replicates", 1), ("steps", 1), ("seed", 0), ("chunk_steps", 1))}
    if ints["seed"] >= 2 ** 63:
        raise FocuslabError("--seed: must be < 2**63")
    if ints["replicates"] < MIN_REPLICATES:
        raise FocuslabError(f"--replicates {ints['replicates']}: a scan needs at least {MIN_REPLICATES} (its standard "
                            "errors, and every winner judged by them, come from the spread between replicates)")
    budget = parse_int(merged["budget"], "budget", 1) if merged.get("budget") is not None else None
    design_seed = parse_int(merged.get("design_seed", 0), "design_seed", 0)
    tuning = resolve(entries, tune, grids["lr"], budget, design_seed)
    return ScanConfig(axes=grids, entries=entries, **ints, tuning=tuning)


def _toml_value(value) -> str:
    if value is None:
        return '"None"'  # TOML has no null; settings read "None" back as None
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def scan_table(config: ScanConfig) -> dict:
    """The resolved config as a [scan] table (the keys of TOML files and flags) that rebuilds the
    same config (same digest): each entry's spec as the optimizer list, and whatever else differs
    from an optimizer's defaults as [scan.optimizer.NAME] (as ``--opt-param`` would give it)."""
    from .optimizers.spec import parse_spec

    table = {name: config.axes[name].spec for name in axes.AXIS_NAMES}
    table["optimizers"] = [e.spec for e in config.entries]
    table.update({key: getattr(config, key) for key in SCAN_SCALARS})
    extra: dict = {}
    for e in config.entries:
        inline = parse_spec(e.spec).settings
        extra.setdefault(e.name, {}).update({k: jsonable(v) for k, v in e.changed().items() if k not in inline})
    table["optimizer"] = {name: params for name, params in extra.items() if params}
    if config.tuning is not None:
        t = config.tuning
        table["tune"] = {label: {"lr": s.lr.spec, **{d.name: d.spec for d in s.dims}} for label, s in t.spaces.items()}
        if t.budget is not None:
            table["budget"] = t.budget
        table["design_seed"] = t.seed
    return table


def config_to_toml(config: ScanConfig) -> str:
    """The resolved config as a [scan] TOML table that rebuilds the same config (same digest)."""
    table = scan_table(config)
    nested = {"optimizer": table.pop("optimizer"), "tune": table.pop("tune", {})}
    lines = ["[scan]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    for section, tables in nested.items():
        for name, params in tables.items():
            lines.append(f"\n[scan.{section}.{name if name.isidentifier() else json.dumps(name)}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in params.items())
    return "\n".join(lines) + "\n"
