"""Shared figure conventions: the paper's optimizer colours, axis labels, grid geometry, saving."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..axes import axis_label as _axis_label
from ..results import atomic_write_bytes

#: Colours of optimizers that are not built-ins (and of a built-in's second entry): 18 hues, none
#: close to the paper's orange, yellow and blue or to the grey of ties; any 12 of the first ones
#: (a zoo map) at least 120 apart in redmean RGB distance from each other and from the paper's
#: colours (tests/test_plot.py); a built-in's own colour on the same map is skipped.
EXTRA_COLOURS = [(102, 187, 106), (171, 71, 188), (141, 110, 99), (38, 166, 154), (236, 64, 122),
                 (0, 0, 0), (128, 0, 0), (92, 107, 192), (205, 220, 57), (255, 0, 255),
                 (0, 96, 100), (128, 128, 0), (0, 0, 128), (170, 255, 195), (96, 125, 139),
                 (255, 250, 200), (220, 190, 255), (250, 190, 212)]
TIE_COLOUR = (200, 200, 200)


def _builtin_colours() -> dict:
    """The built-ins' own colours (the paper's Fig. 2 colours for Adam, Signum and FOCUS), by every
    spelling."""
    from ..optimizers import builtin

    return {spelling: builtin.BY_NAME[name].colour for spelling, name in builtin.SPELLINGS.items()}


PAPER_COLOURS = _builtin_colours()


def _head(label: str) -> str:
    return label.split(":", 1)[0]


def colour(label: str, labels: list[str] | None = None) -> tuple[float, float, float]:
    """RGB in [0, 1] for the optimizer ``label`` among ``labels``: a built-in's own colour for its
    first entry (the bare name if present), a distinct extra colour for every other entry
    (variants such as ``focus:gamma=0.4``, and every external optimizer)."""
    labels = list(labels or [label])
    if label not in labels:
        labels.append(label)
    own = {}  # built-in spelling -> the entry that gets its colour: the bare name, else the first entry
    for lab in labels:
        head = _head(lab)
        if head in PAPER_COLOURS and (head not in own or (lab == head and own[head] != head)):
            own[head] = lab
    extra = [lab for lab in labels if own.get(_head(lab)) != lab]
    if own.get(_head(label)) == label:
        rgb = PAPER_COLOURS[_head(label)]
    else:  # a built-in on the map keeps its colour: the extras skip it (sgd is the first extra's green)
        taken = {PAPER_COLOURS[head] for head in own}
        free = [c for c in EXTRA_COLOURS if c not in taken]
        rgb = free[extra.index(label) % len(free)]
    return tuple(c / 255 for c in rgb)


def display_name(label: str, settings: dict | None = None, external: dict | None = None,
                 base: dict | None = None) -> str:
    """Legend text for an optimizer from what its results directory recorded: its title plus the
    settings that differ from its defaults ("FOCUS γ=0.4").  ``settings``: label -> settings;
    ``external``: label -> record of an external optimizer; ``base``: optimizer -> the settings a
    study's preset gives every entry (those are not news in a legend)."""
    from ..optimizers import legend_for

    return legend_for(label, settings, external, base)


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
