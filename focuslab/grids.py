"""Grids as users write them, parsed one way for every command: ``START:STOP:NUM`` (linear,
endpoints included), ``START:STOP:NUM:log`` (log-spaced), a comma list ``1,10,100``, or one number;
numbers may use ``pi`` (``pi/6``).  A leaf module (imports nothing of focuslab's but the error type
and the number parser), so the config, the tuning spaces and the plots can all use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import FocuslabError
from .values import parse_number


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


#: Most values one grid may have (a larger NUM is a typo, and would fill memory before anything runs).
MAX_GRID = 100_000


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
    if num > MAX_GRID:
        raise FocuslabError(f"{where}: in {text!r}, NUM {num} is more than {MAX_GRID} values; one axis of a map "
                            "needs far fewer")
    log = len(parts) == 4 and parts[3] == "log"
    if log:
        if start <= 0 or stop <= 0:
            raise FocuslabError(f"{where}: log grid {text!r} needs positive endpoints")
        values = np.logspace(math.log10(start), math.log10(stop), num)
    else:
        values = np.linspace(start, stop, num)
    scale = "single" if num == 1 else ("log" if log else "linear")
    return Grid(text, tuple(float(v) for v in values), scale)


