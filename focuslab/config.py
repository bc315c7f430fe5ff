"""Scan configuration: grid specs, TOML presets, validation with one-line errors.

A grid is written ``START:STOP:NUM`` (linear, endpoints included), ``START:STOP:NUM:log``
(log-spaced), a comma list ``1,10,100``, or a single number.  Numbers may use ``pi``
(``pi/6``).  Precedence when building a config: preset ``default`` < ``--config`` file < flags.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import operator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import FocuslabError
from .toy.updates import RULES

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

# Physical axes of a cell, in the order used everywhere (tables, keys, kernel rows), then lr.
CELL_AXES = ("sharpness", "noise", "weight_decay", "theta", "c")
AXES = CELL_AXES + ("lr",)
AXIS_LABELS = {
    "sharpness": ("Sharpness", "a"),
    "noise": ("Noise std", "σ"),
    "weight_decay": ("Weight decay", "ω"),
    "theta": ("Valley angle", "φ"),
    "c": ("Slope", "c"),
    "lr": ("Learning rate", "η"),
}
SCALARS = ("replicates", "steps", "seed", "chunk_steps")
KNOWN_KEYS = set(AXES) | set(SCALARS) | {"optimizers", "optimizer"}

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.Pow: operator.pow, ast.USub: operator.neg,
        ast.UAdd: operator.pos}


def parse_number(text: str | float | int) -> float:
    """A float from a literal or a tiny arithmetic expression over numbers and ``pi``."""
    if isinstance(text, bool):
        raise FocuslabError(f"expected a number, got {text!r}")
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
        value = ev(ast.parse(str(text).strip(), mode="eval").body)
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, TypeError):
        raise FocuslabError(f"not a number: {text!r}") from None
    return value


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
    """Parse a grid spec (string, number or list of numbers)."""
    where = f"--{name.replace('_', '-')}"
    if isinstance(spec, (list, tuple)):
        values = tuple(parse_number(v) for v in spec)
        if not values:
            raise FocuslabError(f"{where}: empty list")
        return Grid(",".join(repr(v) for v in values), values, "list" if len(values) > 1 else "single")
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Grid(repr(float(spec)), (float(spec),), "single")
    if not isinstance(spec, str) or not spec.strip():
        raise FocuslabError(f"{where}: expected a grid like START:STOP:NUM[:log] or a list, got {spec!r}")
    text = spec.strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3].strip() not in ("log", "lin")):
                raise FocuslabError("")
            start, stop = parse_number(parts[0]), parse_number(parts[1])
            num = parts[2].strip()
            if not num.isdigit() or int(num) < 1:
                raise FocuslabError("")
            num = int(num)
            if len(parts) == 4 and parts[3].strip() == "log":
                if start <= 0 or stop <= 0:
                    raise FocuslabError(f"{where}: log grid {text!r} needs positive endpoints")
                values = np.logspace(math.log10(start), math.log10(stop), num)
                scale = "log"
            else:
                values = np.linspace(start, stop, num)
                scale = "linear"
            if num == 1:
                scale = "single"
            return Grid(text, tuple(float(v) for v in values), scale)
        values = tuple(parse_number(v) for v in text.split(","))
        return Grid(text, values, "list" if len(values) > 1 else "single")
    except FocuslabError as err:
        if str(err):
            raise
        raise FocuslabError(f"{where}: malformed grid {spec!r} (use START:STOP:NUM, "
                            "START:STOP:NUM:log or a comma list)") from None


def _check_axis(name: str, grid: Grid) -> None:
    vals = np.asarray(grid.values)
    flag = f"--{name.replace('_', '-')}"
    if not np.all(np.isfinite(vals)):
        raise FocuslabError(f"{flag}: values must be finite")
    if len(set(grid.values)) != len(grid.values):
        raise FocuslabError(f"{flag}: repeated values in {grid.spec!r}")
    rules = {"sharpness": (lambda v: v > 0, "must be > 0"),
             "noise": (lambda v: v >= 0, "must be >= 0 (it is a standard deviation)"),
             "weight_decay": (lambda v: v >= 0, "must be >= 0"),
             "lr": (lambda v: v > 0, "must be > 0")}
    if name in rules:
        ok, why = rules[name]
        bad = [v for v in grid.values if not ok(v)]
        if bad:
            raise FocuslabError(f"{flag}: {bad[0]:g} {why}")


def _check_opt_params(optimizers: tuple[str, ...], params: dict) -> dict:
    out = {}
    for opt, values in params.items():
        if opt not in RULES:
            raise FocuslabError(f"unknown optimizer {opt!r} in optimizer parameters "
                                f"(known: {', '.join(RULES)})")
        rule = RULES[opt]
        clean = {}
        for key, value in values.items():
            if key not in rule.defaults:
                raise FocuslabError(f"unknown parameter {opt}.{key} (known: "
                                    f"{', '.join(opt + '.' + k for k in rule.defaults)})")
            if key in rule.choices:
                if value not in rule.choices[key]:
                    raise FocuslabError(f"{opt}.{key} must be one of {', '.join(rule.choices[key])}, "
                                        f"got {value!r}")
                clean[key] = value
                continue
            v = parse_number(value)
            if key.startswith("beta") or key == "momentum":
                if not 0.0 <= v < 1.0:
                    raise FocuslabError(f"{opt}.{key} must be in [0, 1), got {v:g}")
            elif key == "eps" and not v > 0:
                raise FocuslabError(f"{opt}.{key} must be > 0, got {v:g}")
            elif key == "gamma" and not (v >= 0 and math.isfinite(v)):
                raise FocuslabError(f"{opt}.{key} must be >= 0, got {v:g}")
            clean[key] = v
        out[opt] = clean
    return out


@dataclass(frozen=True)
class ScanConfig:
    """Everything that determines a scan's numbers (and nothing that does not, like --jobs)."""

    axes: dict  # axis name -> Grid (all of AXES)
    optimizers: tuple[str, ...]
    opt_params: dict = field(default_factory=dict)  # optimizer -> {param: value}
    replicates: int = 50
    steps: int = 1000
    seed: int = 0
    chunk_steps: int = 200_000_000  # target work per chunk (lanes x steps); fixes the chunk layout

    @property
    def scanned_axes(self) -> list[str]:
        """Physical axes with more than one value, in CELL_AXES order."""
        return [a for a in CELL_AXES if len(self.axes[a]) > 1]

    def hyperparameters(self, optimizer: str) -> dict:
        rule = RULES[optimizer]
        return {**rule.defaults, **self.opt_params.get(optimizer, {})}

    def to_dict(self) -> dict:
        return {
            **{name: self.axes[name].spec for name in AXES},
            "values": {name: list(self.axes[name].values) for name in AXES},
            "scales": {name: self.axes[name].scale for name in AXES},
            "optimizers": list(self.optimizers),
            "optimizer": {o: self.hyperparameters(o) for o in self.optimizers},
            "replicates": self.replicates, "steps": self.steps, "seed": self.seed,
            "chunk_steps": self.chunk_steps,
        }

    def digest(self) -> str:
        """Hash of everything that determines the numbers (grid values, not their spelling)."""
        d = self.to_dict()
        for name in AXES:
            d.pop(name)
        d.pop("scales")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def n_cells(self) -> int:
        return int(np.prod([len(self.axes[a]) for a in CELL_AXES]))

    def total_steps(self) -> int:
        return (self.n_cells * len(self.axes["lr"]) * self.replicates * self.steps
                * len(self.optimizers))


def preset_path(name: str) -> Path:
    """Path of a preset TOML shipped with focuslab (configs/NAME.toml)."""
    path = Path(str(resources.files("focuslab.presets").joinpath(f"{name}.toml")))
    if not path.is_file():
        raise FocuslabError(f"no preset named {name!r} (available: {', '.join(list_presets())})")
    return path


def list_presets() -> list[str]:
    root = resources.files("focuslab.presets")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_toml(path_or_preset: str | Path, section: str | None = None) -> dict:
    """Read a config file, or a preset by name; returns the table (or one section of it)."""
    path = Path(path_or_preset)
    if not path.exists() and "/" not in str(path_or_preset) and not str(path_or_preset).endswith(".toml"):
        path = preset_path(str(path_or_preset))
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


def build_scan_config(file_values: dict | None = None, overrides: dict | None = None) -> ScanConfig:
    """Merge preset ``default`` < file values < overrides, validate, and freeze.

    ``overrides`` uses the same keys as the TOML [scan] table; ``optimizer`` maps an optimizer to
    a dict of hyperparameters.
    """
    merged = dict(load_toml("default", "scan"))
    opt_params: dict = {}
    for source in (file_values or {}, overrides or {}):
        unknown = set(source) - KNOWN_KEYS
        if unknown:
            raise FocuslabError(f"unknown config key(s): {', '.join(sorted(unknown))} "
                                f"(known: {', '.join(sorted(KNOWN_KEYS))})")
        for key, value in source.items():
            if key == "optimizer":
                if not isinstance(value, dict):
                    raise FocuslabError("[scan.optimizer] must be a table of optimizer tables")
                for opt, params in value.items():
                    if not isinstance(params, dict):
                        raise FocuslabError(f"[scan.optimizer.{opt}] must be a table")
                    opt_params.setdefault(opt, {}).update(params)
            elif value is not None:
                merged[key] = value
    axes = {}
    for name in AXES:
        grid = parse_grid(merged[name], name)
        _check_axis(name, grid)
        axes[name] = grid
    optimizers = merged["optimizers"]
    if isinstance(optimizers, str):
        optimizers = [o.strip() for o in optimizers.split(",") if o.strip()]
    optimizers = tuple(optimizers)
    if not optimizers:
        raise FocuslabError("--optimizers: give at least one optimizer")
    for opt in optimizers:
        if opt not in RULES:
            raise FocuslabError(f"unknown optimizer {opt!r} (known: {', '.join(RULES)})")
    if len(set(optimizers)) != len(optimizers):
        raise FocuslabError("--optimizers: an optimizer is listed twice")
    ints = {}
    for key, low in (("replicates", 1), ("steps", 1), ("seed", 0), ("chunk_steps", 1)):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                value = int(str(value), 10)
            except ValueError:
                raise FocuslabError(f"--{key}: expected an integer, got {merged[key]!r}") from None
        if value < low:
            raise FocuslabError(f"--{key}: must be >= {low}, got {value}")
        ints[key] = value
    if ints["seed"] >= 2 ** 63:
        raise FocuslabError("--seed: must be < 2**63")
    return ScanConfig(axes=axes, optimizers=optimizers,
                      opt_params=_check_opt_params(optimizers, opt_params), **ints)


def parse_opt_param(items) -> dict:
    """``['focus.gamma=0.4', ...]`` -> ``{'focus': {'gamma': '0.4'}}`` (values validated later)."""
    out: dict = {}
    for item in items or ():
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise FocuslabError(f"--opt-param: expected OPTIMIZER.NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        opt, name = key.split(".", 1)
        out.setdefault(opt.strip(), {})[name.strip()] = value.strip()
    return out


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
    """The resolved config as a [scan] table (the keys of TOML files and flags); build_scan_config
    rebuilds the same config (same digest) from it."""
    table = {name: config.axes[name].spec for name in AXES}
    table["optimizers"] = list(config.optimizers)
    table.update({key: getattr(config, key) for key in SCALARS})
    table["optimizer"] = {o: dict(p) for o, p in config.opt_params.items() if p}
    return table


def config_to_toml(config: ScanConfig) -> str:
    """The resolved config as a [scan] TOML table that rebuilds the same config (same digest)."""
    table = scan_table(config)
    per_optimizer = table.pop("optimizer")
    lines = ["[scan]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    for opt, params in per_optimizer.items():
        lines.append(f"\n[scan.optimizer.{opt}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in params.items())
    return "\n".join(lines) + "\n"
