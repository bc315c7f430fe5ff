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


def _rule(label: str) -> str:
    return label.split(":", 1)[0]


def colour(label: str, labels: list[str] | None = None) -> tuple[float, float, float]:
    """RGB in [0, 1] for the optimizer ``label`` among ``labels``: the paper's colour for the first
    entry of Adam(W), Signum and FOCUS, a distinct extra colour for every other entry (variants
    such as ``focus:gamma=0.4`` and optimizers the paper did not use)."""
    labels = list(labels or [label])
    if label not in labels:
        labels.append(label)
    paper = {}  # rule -> the entry that gets the paper's colour: the bare name, else the first entry
    for lab in labels:
        rule = _rule(lab)
        if rule in PAPER_COLOURS and (rule not in paper or (lab == rule and paper[rule] != rule)):
            paper[rule] = lab
    extra = [lab for lab in labels if paper.get(_rule(lab)) != lab]
    if paper.get(_rule(label)) == label:
        rgb = PAPER_COLOURS[_rule(label)]
    else:
        rgb = EXTRA_COLOURS[extra.index(label) % len(EXTRA_COLOURS)]
    return tuple(c / 255 for c in rgb)


TITLES = {"adam": "Adam", "adamw": "AdamW", "signum": "Signum", "focus": "FOCUS", "sgd": "SGD", "lion": "Lion"}


def display_name(label: str, settings: dict | None = None, registry=None) -> str:
    """Legend text for an optimizer: its title plus the settings that differ from the registry's
    defaults ("FOCUS γ=0.4").  Without settings, the ones written in the label are shown."""
    from ..config import split_entry
    from ..hyper import SYMBOLS

    rule, inline = split_entry(label)
    if registry is not None and settings:
        try:
            return registry.get(rule).legend(settings)
        except Exception:  # an optimizer this focuslab does not know (older results)
            pass
    title = TITLES.get(rule, rule)
    return title + (" " + ", ".join(f"{SYMBOLS.get(k, k)}={v}" for k, v in inline.items()) if inline else "")


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
