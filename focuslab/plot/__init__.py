"""matplotlib figures from results on disk (never re-runs anything).

``plot_results`` draws whatever a results directory holds, chosen by the directory's kind
(focuslab.results.kind_of): phase diagrams of a scan (and its refined map), Fig. 2c/2d of an MNIST
study (and its diagnostics), validation curves of one or several GPT-2 runs (and theirs), and the
readings of a `focuslab bridge` (focuslab.plot.bridge).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import FocuslabError
from ..options import setting

FORMATS = ("png", "pdf", "svg")


@dataclass(frozen=True)
class PlotSettings:
    """The plot command's flags, declared once."""

    out: str = setting(None, "where to write the figures", metavar="DIR", shown="the (first) results directory")
    format: str = setting("png", "figure formats, comma separated: png, pdf, svg", metavar="LIST")
    significance: float = setting(2.0, "a cell of a scan's map gets a winner only if it beats the runner-up by more "
                                       "than K combined standard errors (Welch); 0: the paper's raw argmin",
                                  metavar="K")
    overlay: str = setting(None, "with a scan: place mnist/gpt2 runs that have diagnostics on its phase map along the "
                                 "noise axis (repeatable)", metavar="RUN_DIR", multiple=True)
    quiet: bool = setting(False, "print nothing but errors", short="-q")


def formats(text: str) -> list[str]:
    fmts = [f.strip().lower() for f in str(text).split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise FocuslabError(f"--format: unknown format {', '.join(bad) or text!r} (choose from {', '.join(FORMATS)})")
    return fmts


def plot_results(dirs, out=None, format: str = "png", significance: float = 2.0, overlay=()) -> dict:
    """Every figure of the results in ``dirs`` (one scan or MNIST study, or one or more GPT-2 runs);
    returns {"files": [...], "summary": [lines], "out": the figures' directory}."""
    from ..results import kind_of

    fmts = formats(format)
    if significance < 0:
        raise FocuslabError(f"--significance: must be >= 0, got {significance:g}")
    dirs = [Path(d) for d in dirs]
    first = dirs[0]
    if not first.is_dir():
        raise FocuslabError(f"results directory not found: {first}")
    kind = kind_of(first)
    if kind is None:
        raise FocuslabError(f"{first} holds no focuslab results (no scan.json, mnist.json, gpt2.json or bridge.json): "
                            "give the directory a `focuslab scan`, `mnist`, `gpt2` or `bridge` run wrote (the path it "
                            "printed)")
    if len(dirs) > 1 and kind != "gpt2":
        raise FocuslabError("several directories are only for GPT-2 runs; plot one scan or study at a time")
    if overlay and kind != "scan":
        raise FocuslabError("--overlay goes with a scan directory (the toy map to draw runs on)")
    where = Path(out or first)
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FocuslabError(f"--out {where}: cannot create the directory ({err.strerror})") from None
    if kind == "mnist":
        from .mnist import plot_mnist

        result = plot_mnist(first, out, fmts)
        if (first / "diagnostics.parquet").exists():
            from .diagnostics import plot_mnist_diagnostics

            files, lines = plot_mnist_diagnostics(first, where, fmts)
            result["files"] += files
            result["summary"] += lines
    elif kind == "gpt2":
        from .gpt2 import plot_runs

        result = plot_runs(dirs, out, fmts)
        with_diag = [d for d in dirs if (d / "diagnostics.parquet").exists()]
        if with_diag:
            from .diagnostics import plot_gpt2_diagnostics

            result["files"] += plot_gpt2_diagnostics(with_diag, where, fmts)
    elif kind == "bridge":
        from .bridge import plot_bridge

        result = plot_bridge(first, where, fmts)
    else:
        from .phase import plot_scan

        result = plot_scan(first, out, fmts, significance, overlay)
    return {**result, "out": where}
