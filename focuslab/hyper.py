"""Declaring an optimizer's settings once: numeric hyperparameters with valid intervals, options
with fixed choices, defaults, validation with errors that name ``optimizer.setting``, aliases and
legend text.  The simulator's registry (focuslab.toy.updates) and torch's (focuslab.optim.registry)
both build on this, so ``focus:gamma=0.4`` and ``--opt-param focus.gamma=0.4`` mean the same thing
in every command.  Imports neither numba nor torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FocuslabError

#: How settings are written in legends ("FOCUS γ=0.4").
SYMBOLS = {"beta1": "β1", "beta2": "β2", "gamma": "γ", "eps": "ε", "momentum": "μ", "decay": "decay"}


@dataclass(frozen=True)
class Hyper:
    """A numeric hyperparameter: name, default, valid interval (e.g. "[0, 1)") and meaning."""

    name: str
    default: float
    interval: str
    doc: str

    def bounds(self) -> tuple[float, float, bool, bool]:
        m = re.fullmatch(r"\s*([\[(])\s*([^,]+),\s*([^\])]+)\s*([\])])\s*", self.interval)
        if not m:
            raise ValueError(f"bad interval {self.interval!r} for {self.name}")
        low, high = float(m.group(2)), float(m.group(3))
        return low, high, m.group(1) == "[", m.group(4) == "]"

    def check(self, value: float) -> bool:
        low, high, low_in, high_in = self.bounds()
        return (value > low or (low_in and value == low)) and (value < high or (high_in and value == high))


@dataclass(frozen=True)
class Option:
    """A choice among fixed values (the first is the default)."""

    name: str
    choices: tuple[str, ...]
    doc: str

    @property
    def default(self) -> str:
        return self.choices[0]


@dataclass(frozen=True)
class OptimizerSpec:
    """Name, display title, meaning and settings of an optimizer (a registry entry's common part)."""

    name: str
    title: str  # display name in legends
    doc: str
    hyper: tuple[Hyper, ...]
    options: tuple[Option, ...]
    aliases: tuple[str, ...]

    @property
    def defaults(self) -> dict:
        """Every setting (hyperparameters and options) at its default."""
        return {**{h.name: h.default for h in self.hyper}, **{o.name: o.default for o in self.options}}

    def resolve(self, params: dict | None = None, where: str | None = None) -> dict:
        """Defaults overlaid with ``params``, validated; errors name ``where`` (default: the optimizer)."""
        from .config import parse_number

        where = where or self.name
        out = self.defaults
        hyper = {h.name: h for h in self.hyper}
        options = {o.name: o for o in self.options}
        for key, value in (params or {}).items():
            if key in options:
                if value not in options[key].choices:
                    raise FocuslabError(f"{where}.{key} must be one of {', '.join(options[key].choices)}, "
                                        f"got {value!r}")
                out[key] = value
            elif key in hyper:
                v = parse_number(value, f"{where}.{key}")
                if not hyper[key].check(v):
                    raise FocuslabError(f"{where}.{key} must be in {hyper[key].interval}, got {v:g}")
                out[key] = v
            else:
                raise FocuslabError(f"unknown parameter {where}.{key} (known: "
                                    f"{', '.join(where + '.' + k for k in self.defaults)})")
        return out

    def legend(self, settings: dict | None = None, base: dict | None = None) -> str:
        """Title plus the settings that differ from ``base`` (default: the defaults): "FOCUS γ=0.4"."""
        base = self.defaults if base is None else base
        changed = [(k, v) for k, v in (settings or {}).items() if k in base and base[k] != v]
        if not changed:
            return self.title
        from .config import format_value

        return self.title + " " + ", ".join(f"{SYMBOLS.get(k, k)}={format_value(v)}" for k, v in changed)


class Registry:
    """Optimizers by name, with aliases; ``get`` gives a one-line error for unknown names."""

    def __init__(self, specs):
        self.specs = {s.name: s for s in specs}
        self.aliases = {a: s.name for s in specs for a in s.aliases}

    def get(self, name: str):
        canonical = self.aliases.get(name, name)
        if canonical not in self.specs:
            raise FocuslabError(f"unknown optimizer {name!r} (known: {', '.join(self.names())})")
        return self.specs[canonical]

    def names(self) -> list[str]:
        return [*self.specs, *self.aliases]

    def __iter__(self):
        return iter(self.specs)

    def __getitem__(self, name):
        return self.specs[name]

    def items(self):
        return self.specs.items()

    def values(self):
        return self.specs.values()
