"""Shared figure conventions: the paper's optimizer colours, axis labels, grid geometry, saving."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..axes import axis_label as _axis_label
from ..results import atomic_write_bytes

# The paper's colours (Fig. 2): Adam orange, Signum yellow, FOCUS blue.
PAPER_COLOURS = {"adam": (244, 111, 67), "adamw": (244, 111, 67), "signum": (251, 221, 133),
                 "focus": (128, 166, 226)}
EXTRA_COLOURS = [(102, 187, 106), (171, 71, 188), (141, 110, 99), (38, 166, 154), (236, 64, 122)]
TIE_COLOUR = (200, 200, 200)
FORMATS = ("png", "pdf", "svg")


def colour(name: str, others: list[str] | None = None) -> tuple[float, float, float]:
    """RGB in [0, 1] for an optimizer: the paper's colour, or a distinct extra one."""
    if name in PAPER_COLOURS:
        rgb = PAPER_COLOURS[name]
    else:
        extra = [o for o in (others or [name]) if o not in PAPER_COLOURS]
        rgb = EXTRA_COLOURS[extra.index(name) % len(EXTRA_COLOURS)] if name in extra else EXTRA_COLOURS[0]
    return tuple(c / 255 for c in rgb)


def display_name(name: str) -> str:
    return {"adam": "Adam", "adamw": "AdamW", "signum": "Signum", "focus": "FOCUS", "sgd": "SGD",
            "lion": "Lion"}.get(name, name)


def axis_label(axis: str, log: bool) -> str:
    return _axis_label(axis, log)


def coords(values, log: bool) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return np.log10(v) if log else v


def edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges halfway between centres (outer edges half a spacing out): cells sit on centres."""
    c = np.asarray(centres, dtype=float)
    if len(c) == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def save(fig, out_dir: Path, stem: str, formats) -> list[Path]:
    """Save ``fig`` once per format, each file written atomically; returns the paths."""
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=fig.dpi)
        path = Path(out_dir) / f"{stem}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths
