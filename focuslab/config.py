"""Configuration shared by every command: numbers and grids, TOML presets, the layered merge, and
optimizer lists.  Imports neither numba nor torch.

* A grid is ``START:STOP:NUM`` (linear, endpoints included), ``START:STOP:NUM:log`` (log-spaced),
  a comma list ``1,10,100``, or one number.  Numbers may use ``pi`` (``pi/6``).
* Every command merges its settings the same way: built-in defaults < ``--config`` file or preset
  < command-line flags (``layered``).  Unknown keys are errors that list the known ones.
* An optimizer list names each optimizer once, optionally with settings after colons:
  ``adam,signum,focus,focus:gamma=0.4``.  ``--opt-param focus.gamma=0.4`` sets a value for every
  ``focus`` entry that does not set it itself.  The same syntax serves scan, mnist and gpt2.

``ScanConfig`` (the toy scans' frozen config) lives here too; MNIST and GPT-2 keep theirs beside
their engines and build them with ``layered``.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import operator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from . import axes
from .errors import FocuslabError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.Pow: operator.pow, ast.USub: operator.neg,
        ast.UAdd: operator.pos}


def parse_number(text, where: str | None = None) -> float:
    """A float from a literal or a tiny arithmetic expression over numbers and ``pi``.
    ``where`` (e.g. "--sharpness") prefixes the error message."""
    prefix = f"{where}: " if where else ""
    if isinstance(text, bool):
        raise FocuslabError(f"{prefix}expected a number, got {text!r}")
    if isinstance(text, (int, float)):
        return float(text)

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id == "pi":
            return math.pi
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError

    try:
        return ev(ast.parse(str(text).strip(), mode="eval").body)
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, TypeError):
        raise FocuslabError(f"{prefix}not a number: {text!r}") from None


@dataclass(frozen=True)
class Grid:
    """Values of one axis and how they were spaced ('single', 'linear', 'log' or 'list')."""

    spec: str
    values: tuple[float, ...]
    scale: str

    @property
    def is_log(self) -> bool:
        return self.scale == "log"

    def __len__(self) -> int:
        return len(self.values)


def parse_grid(spec, name: str = "grid") -> Grid:
    """Parse a grid spec (string, number or list of numbers); errors name the flag --NAME."""
    where = "--" + name.replace("_", "-")
    if isinstance(spec, (list, tuple)):
        values = tuple(parse_number(v, where) for v in spec)
        if not values:
            raise FocuslabError(f"{where}: empty list")
        return Grid(",".join(repr(v) for v in values), values, "list" if len(values) > 1 else "single")
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Grid(repr(float(spec)), (float(spec),), "single")
    if not isinstance(spec, str) or not spec.strip():
        raise FocuslabError(f"{where}: expected a grid like START:STOP:NUM[:log] or a list, got {spec!r}")
    text = spec.strip()
    if ":" not in text:
        values = tuple(parse_number(v, where) for v in text.split(","))
        return Grid(text, values, "list" if len(values) > 1 else "single")
    parts = [p.strip() for p in text.split(":")]
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("log", "lin")):
        raise FocuslabError(f"{where}: malformed grid {spec!r} (use START:STOP:NUM, START:STOP:NUM:log "
                            "or a comma list)")
    start, stop = parse_number(parts[0], where), parse_number(parts[1], where)
    try:
        num = int(parts[2])
    except ValueError:
        raise FocuslabError(f"{where}: in {text!r}, NUM must be a whole number, got {parts[2]!r}") from None
    if num < 1:
        raise FocuslabError(f"{where}: in {text!r}, NUM must be >= 1, got {num}")
    log = len(parts) == 4 and parts[3] == "log"
    if log:
        if start <= 0 or stop <= 0:
            raise FocuslabError(f"{where}: log grid {text!r} needs positive endpoints")
        values = np.logspace(math.log10(start), math.log10(stop), num)
    else:
        values = np.linspace(start, stop, num)
    scale = "single" if num == 1 else ("log" if log else "linear")
    return Grid(text, tuple(float(v) for v in values), scale)


def check_axis(name: str, grid: Grid) -> None:
    """Values of a toy axis must be finite, distinct and in the axis's range (focuslab.axes)."""
    axis = axes.BY_NAME[name]
    if len(set(grid.values)) != len(grid.values):
        raise FocuslabError(f"{axis.flag}: repeated values in {grid.spec!r}")
    for v in grid.values:
        why = axis.check(v)
        if why:
            raise FocuslabError(f"{axis.flag}: {v:g} {why}")


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


def load_toml(path_or_preset: str | Path, section: str | None = None) -> dict:
    """Read a config file, or a preset by name; returns the table (or one section of it)."""
    path = Path(path_or_preset)
    if not path.exists() and "/" not in str(path_or_preset) and not str(path_or_preset).endswith(".toml"):
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


# --- optimizer lists (every command) ---------------------------------------------------------
def parse_opt_params(items) -> dict:
    """``['focus.gamma=0.4', ...]`` -> ``{'focus': {'gamma': '0.4'}}`` (values validated later)."""
    out: dict = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        opt, dot, name = key.partition(".")
        if not sep or not dot or not opt.strip() or not name.strip():
            raise FocuslabError(f"--opt-param: expected OPTIMIZER.NAME=VALUE, got {item!r}")
        out.setdefault(opt.strip(), {})[name.strip()] = value.strip()
    return out


def split_entry(entry: str) -> tuple[str, dict]:
    """'focus:gamma=0.4:beta2=0.95' -> ('focus', {'gamma': '0.4', 'beta2': '0.95'})."""
    name, *pairs = [p.strip() for p in str(entry).split(":")]
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FocuslabError(f"--optimizers: expected NAME:KEY=VALUE in {entry!r}, got {pair!r}")
        params[key.strip()] = value.strip()
    return name, params


def file_slug(label: str) -> str:
    """An optimizer label as a file-name-safe string ('focus:gamma=0.4' -> 'focus_gamma-0.4')."""
    import re

    return re.sub(r"[^A-Za-z0-9._=-]", "_", label).replace("=", "-")


def format_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class OptimizerEntry:
    """One optimizer of a study: its label (the tables' ``optimizer`` column), the rule it runs and
    its full resolved settings."""

    label: str
    name: str
    settings: dict

    def changed(self, defaults: dict) -> dict:
        """Settings that differ from the rule's defaults (what a legend should show)."""
        return {k: v for k, v in self.settings.items() if defaults.get(k) != v}


def parse_optimizers(spec, opt_params: dict | None, registry) -> tuple[OptimizerEntry, ...]:
    """Resolve an optimizer list against ``registry`` (an object with ``get(name)`` returning a
    definition with ``name``, ``resolve(params, where)`` and ``defaults``).

    Each entry's label is the canonical name plus the settings written inline (values
    normalised), e.g. ``focus:gamma=0.4``; ``opt_params`` (``--opt-param``) fill in, for every entry
    of an optimizer, what the entry does not set itself.  Two entries with the same settings are an
    error.
    """
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = [str(s).strip() for s in (spec or ()) if str(s).strip()]
    if not items:
        raise FocuslabError("--optimizers: give at least one optimizer")
    opt_params = dict(opt_params or {})
    entries, seen = [], {}
    used_params = set()
    for item in items:
        name, inline = split_entry(item)
        definition = registry.get(name)
        inline_clean = definition.resolve(inline, definition.name)
        inline_clean = {k: inline_clean[k] for k in inline}  # normalised inline values only
        extra = {}
        for key in (name, definition.name):
            if key in opt_params:
                extra.update(opt_params[key])
                used_params.add(key)
        settings = definition.resolve({**extra, **inline}, definition.name)
        label = ":".join([definition.name, *(f"{k}={format_value(inline_clean[k])}"
                                             for k in definition.defaults if k in inline_clean)])
        frozen = json.dumps(settings, sort_keys=True)
        key = (definition.name, frozen)
        if key in seen or label in {e.label for e in entries}:
            raise FocuslabError(f"--optimizers: {item!r} repeats {seen.get(key, label)!r} (same settings)")
        seen[key] = item
        entries.append(OptimizerEntry(label, definition.name, settings))
    for key in opt_params:
        if key not in used_params:
            definition = registry.get(key)  # unknown names raise here
            listed = ", ".join(e.label for e in entries)
            raise FocuslabError(f"--opt-param {key}.{next(iter(opt_params[key]))}=...: {definition.name} is not "
                                f"among the optimizers ({listed})")
    return tuple(entries)


# --- the toy scan's config --------------------------------------------------------------------
SCAN_SCALARS = ("replicates", "steps", "seed", "chunk_steps")
SCAN_KEYS = set(axes.AXIS_NAMES) | set(SCAN_SCALARS) | {"optimizers", "optimizer"}
#: Versions of what determines a scan's numbers beyond its config; part of the digest, so a scan
#: directory written by an engine that would give other numbers or another chunk layout is never
#: resumed with this one.  generator: the normal generator (focuslab.toy.rng.GENERATOR_VERSION).
ENGINE = {"generator": 1, "chunk_layout": 2}


@dataclass(frozen=True)
class ScanConfig:
    """Everything that determines a scan's numbers (and nothing that does not, like --jobs)."""

    axes: dict  # axis name -> Grid (all of focuslab.axes.AXES)
    entries: tuple  # OptimizerEntry, in the order given
    replicates: int = 50
    steps: int = 1000
    seed: int = 0
    chunk_steps: int = 200_000_000  # target work per chunk (lanes x steps); fixes the chunk layout

    @property
    def optimizers(self) -> tuple[str, ...]:
        """Labels of the optimizers (the tables' ``optimizer`` column)."""
        return tuple(e.label for e in self.entries)

    def entry(self, label: str) -> OptimizerEntry:
        return next(e for e in self.entries if e.label == label)

    @property
    def scanned_axes(self) -> list[str]:
        """Physical axes with more than one value, in CELL_AXES order."""
        return [a for a in axes.CELL_NAMES if len(self.axes[a]) > 1]

    def to_dict(self) -> dict:
        return {
            **{name: self.axes[name].spec for name in axes.AXIS_NAMES},
            "values": {name: list(self.axes[name].values) for name in axes.AXIS_NAMES},
            "scales": {name: self.axes[name].scale for name in axes.AXIS_NAMES},
            "optimizers": list(self.optimizers),
            "optimizer": {e.label: dict(e.settings) for e in self.entries},
            "replicates": self.replicates, "steps": self.steps, "seed": self.seed,
            "chunk_steps": self.chunk_steps, "engine": dict(ENGINE),
        }

    def digest(self) -> str:
        """Hash of everything that determines the numbers (grid values, not their spelling)."""
        d = self.to_dict()
        for name in axes.AXIS_NAMES:
            d.pop(name)
        d.pop("scales")
        return config_digest(d)

    @property
    def n_cells(self) -> int:
        return int(np.prod([len(self.axes[a]) for a in axes.CELL_NAMES]))

    def total_steps(self) -> int:
        return (self.n_cells * len(self.axes["lr"]) * self.replicates * self.steps
                * len(self.entries))


def build_scan_config(file_values: dict | None = None, overrides: dict | None = None) -> ScanConfig:
    """Merge preset ``default`` < file values < overrides, validate, and freeze.

    ``overrides`` uses the same keys as the TOML [scan] table; ``optimizer`` maps an optimizer to
    a dict of hyperparameters (what ``--opt-param`` gives).
    """
    from .toy import updates  # numba-free registry

    base = load_toml("default", "scan")
    layers = [base, file_values or {}, overrides or {}]
    opt_params: dict = {}
    for layer in layers:
        value = (layer or {}).get("optimizer")
        if value is None:
            continue
        if not isinstance(value, dict):
            raise FocuslabError("[scan.optimizer] must be a table of optimizer tables")
        for opt, params in value.items():
            if not isinstance(params, dict):
                raise FocuslabError(f"[scan.optimizer.{opt}] must be a table")
            opt_params.setdefault(opt, {}).update(params)
    merged = layered(SCAN_KEYS, *layers, what="scan config")
    grids = {}
    for name in axes.AXIS_NAMES:
        grid = parse_grid(merged[name], name)
        check_axis(name, grid)
        grids[name] = grid
    entries = parse_optimizers(merged["optimizers"], opt_params, updates)
    ints = {key: parse_int(merged[key], key, low)
            for key, low in (("replicates", 1), ("steps", 1), ("seed", 0), ("chunk_steps", 1))}
    if ints["seed"] >= 2 ** 63:
        raise FocuslabError("--seed: must be < 2**63")
    return ScanConfig(axes=grids, entries=entries, **ints)


def _toml_value(value) -> str:
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
    same config (same digest): the labels as the optimizer list, and whatever else differs from a
    rule's defaults as [scan.optimizer.RULE] (as ``--opt-param`` would give it)."""
    from .toy import updates

    table = {name: config.axes[name].spec for name in axes.AXIS_NAMES}
    table["optimizers"] = list(config.optimizers)
    table.update({key: getattr(config, key) for key in SCAN_SCALARS})
    extra: dict = {}
    for e in config.entries:
        inline = split_entry(e.label)[1]
        extra.setdefault(e.name, {}).update(
            {k: v for k, v in e.changed(updates.get(e.name).defaults).items() if k not in inline})
    table["optimizer"] = {rule: params for rule, params in extra.items() if params}
    return table


def config_to_toml(config: ScanConfig) -> str:
    """The resolved config as a [scan] TOML table that rebuilds the same config (same digest)."""
    table = scan_table(config)
    per_optimizer = table.pop("optimizer")
    lines = ["[scan]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    for rule, params in per_optimizer.items():
        lines.append(f"\n[scan.optimizer.{rule}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in params.items())
    return "\n".join(lines) + "\n"
