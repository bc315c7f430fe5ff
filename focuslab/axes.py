"""The axes of a toy scan, defined once: names, order, symbols, labels and valid ranges.

Everything that needs an axis (grid parsing and validation, the kernel's cell columns, the tables'
columns, plot labels, the reference stepper's keywords) derives it from here.  One name per concept:

  sharpness     a   curvature scale of the valley (L = 1/2 a u^2 v^2 - c u)
  noise         σ   std of the multiplicative N(1, σ²) gradient factors
  weight_decay  ω   decoupled weight decay
  phi           φ   valley angle: (u, v) = theta . R(phi)
  c             c   slope along the valley floor
  lr            η   learning rate (every value is run; each optimizer is judged at its best)

``theta`` always means the parameter vector (theta1, theta2), never the angle.  This module imports
neither numba nor torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Axis:
    name: str  # config key, table column, CLI flag --name (underscores as dashes)
    symbol: str
    words: str
    low: float = -math.inf  # valid range
    low_open: bool = False
    doc: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: float) -> str | None:
        """Why ``value`` is invalid for this axis, or None."""
        if not math.isfinite(value):
            return "must be finite"
        if value < self.low or (self.low_open and value == self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        return None

    def label(self, log: bool) -> str:
        return f"{self.words}, log10 {self.symbol}" if log else f"{self.words}, {self.symbol}"


SHARPNESS = Axis("sharpness", "a", "Sharpness", 0.0, True, "valley sharpness a")
NOISE = Axis("noise", "σ", "Noise std", 0.0, False, "std of the N(1, σ²) gradient factors")
WEIGHT_DECAY = Axis("weight_decay", "ω", "Weight decay", 0.0, False, "decoupled weight decay ω")
PHI = Axis("phi", "φ", "Valley angle", doc="valley angle φ (radians; may use pi)")
C = Axis("c", "c", "Slope", doc="slope c along the valley floor")
LR = Axis("lr", "η", "Learning rate", 0.0, True, "learning rates (each optimizer is judged at its best)")

#: Physical axes of a cell, in the one order used everywhere (tables, random keys, kernel columns).
CELL_AXES: tuple[Axis, ...] = (SHARPNESS, NOISE, WEIGHT_DECAY, PHI, C)
CELL_NAMES: tuple[str, ...] = tuple(a.name for a in CELL_AXES)
AXES: tuple[Axis, ...] = CELL_AXES + (LR,)
AXIS_NAMES: tuple[str, ...] = tuple(a.name for a in AXES)
BY_NAME: dict[str, Axis] = {a.name: a for a in AXES}
#: Column of each cell axis in a cell-coordinate array.
COLUMN: dict[str, int] = {name: i for i, name in enumerate(CELL_NAMES)}


def axis_label(name: str, log: bool = False) -> str:
    """Plot label of an axis ("Sharpness, log10 a"); unknown names are returned as they are."""
    axis = BY_NAME.get(name)
    return axis.label(log) if axis else name


def cell_array(**columns):
    """Cell coordinates as an (n, 5) float64 array in CELL_AXES order, from one keyword per cell
    axis (arrays of one length, or scalars, which broadcast):
    ``cell_array(sharpness=[1, 10], noise=0.5, weight_decay=0.1, phi=math.pi / 6, c=0.1)``."""
    import numpy as np

    unknown, missing = set(columns) - set(CELL_NAMES), set(CELL_NAMES) - set(columns)
    if unknown or missing:
        raise ValueError(f"cell_array needs exactly {', '.join(CELL_NAMES)} "
                         f"(unknown: {sorted(unknown)}, missing: {sorted(missing)})")
    cols = np.broadcast_arrays(*[np.atleast_1d(np.asarray(columns[n], dtype=np.float64)) for n in CELL_NAMES])
    return np.column_stack(cols)
