"""Declaring an optimizer's settings once: numeric hyperparameters with valid intervals, options
with fixed choices, each with its default and where that default comes from; validation with
errors that name ``optimizer.setting``; legend text.  Imports neither numba nor torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import FocuslabError
from ..values import format_value, parse_number

#: How settings are written in legends ("FOCUS γ=0.4").
SYMBOLS = {"beta1": "β1", "beta2": "β2", "betas": "β", "gamma": "γ", "eps": "ε", "momentum": "μ"}


@dataclass(frozen=True)
class Hyper:
    """A numeric hyperparameter: name, default, valid interval (e.g. "[0, 1)"), meaning, the
    source of the default (a paper, a reference implementation), and the default search space
    ``space`` (a grid, as every grid is written) that ``--tune OPT`` explores; "" keeps the
    setting out of the default space (it is tuned only when named)."""

    name: str
    default: float
    interval: str
    doc: str
    source: str = ""
    space: str = ""

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
    """A choice among fixed values (the first is the default); ``tuned``: part of the default
    search space (every choice)."""

    name: str
    choices: tuple[str, ...]
    doc: str
    source: str = ""
    tuned: bool = False

    @property
    def default(self) -> str:
        return self.choices[0]


@dataclass(frozen=True)
class Settings:
    """Name, display title, meaning and settings of an optimizer."""

    name: str
    title: str  # display name in legends
    doc: str
    hyper: tuple[Hyper, ...]
    options: tuple[Option, ...]

    def default_space(self) -> dict:
        """setting -> grid spec (or list of choices) of the default search space (``--tune OPT``)."""
        return {**{h.name: h.space for h in self.hyper if h.space},
                **{o.name: ",".join(o.choices) for o in self.options if o.tuned}}

    @property
    def defaults(self) -> dict:
        """Every setting (hyperparameters and options) at its default."""
        return {**{h.name: h.default for h in self.hyper}, **{o.name: o.default for o in self.options}}

    def resolve(self, params: dict | None = None, where: str | None = None) -> dict:
        """Defaults overlaid with ``params``, validated; errors name ``where`` (default: the optimizer)."""
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
                raise FocuslabError(f"unknown setting {where}.{key} (known: "
                                    f"{', '.join(where + '.' + k for k in self.defaults)})")
        return out

    def legend(self, settings: dict | None = None, title: str | None = None) -> str:
        """Title plus the settings that differ from the defaults: "FOCUS γ=0.4"."""
        return legend(title or self.title, settings, self.defaults)


def legend(title: str, settings: dict | None, defaults: dict | None) -> str:
    """``title`` plus the ``settings`` that differ from ``defaults`` ("FOCUS γ=0.4")."""
    defaults = defaults or {}
    changed = [(k, v) for k, v in (settings or {}).items() if k not in defaults or defaults[k] != v]
    if not changed:
        return title
    return title + " " + ", ".join(f"{SYMBOLS.get(k, k)}={format_value(v)}" for k, v in changed)
