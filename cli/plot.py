"""``focuslab plot``: figures from a results directory (never re-runs a simulation)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("results_dir", type=click.Path(path_type=Path), nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where to write figures [RESULTS_DIR].")
@click.option("--format", "formats", default="png", show_default=True, metavar="LIST",
              help="comma list of png, pdf, svg.")
@click.option("--significance", type=float, default=2.0, show_default=True, metavar="K",
              help="a cell gets a winner only if it beats the runner-up by more than K combined "
                   "standard errors (Welch); 0 = the paper's raw argmin.")
@click.option("--overlay", multiple=True, type=click.Path(path_type=Path), metavar="RUN_DIR",
              help="with a scan: place mnist/gpt2 runs that have diagnostics on its phase map along the noise "
                   "axis (repeatable).")
@click.option("--quiet", "-q", is_flag=True, help="print nothing on success.")
def plot(results_dir, out, formats, significance, overlay, quiet):
    """Draw the figures of results: phase diagrams of a `focuslab scan`, Fig. 2c/2d of a
    `focuslab mnist` study, validation curves of one or several `focuslab gpt2` runs."""
    from focuslab.errors import FocuslabError
    from focuslab.plot.phase import plot_scan
    from focuslab.plot.style import FORMATS

    fmts = [f.strip().lower() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise FocuslabError(f"--format: unknown format {', '.join(bad) or formats!r} "
                            f"(choose from {', '.join(FORMATS)})")
    if significance < 0:
        raise FocuslabError(f"--significance: must be >= 0, got {significance:g}")
    first = results_dir[0]
    if not first.is_dir():
        raise FocuslabError(f"results directory not found: {first}")
    if not any((first / name).exists() for name in ("scan.json", "mnist.json", "gpt2.json")):
        raise FocuslabError(f"{first} holds no focuslab results (no scan.json, mnist.json or gpt2.json): give the "
                            "directory a `focuslab scan`, `mnist` or `gpt2` run wrote (the path it printed)")
    if len(results_dir) > 1 and not (first / "gpt2.json").exists():
        raise FocuslabError("several directories are only for GPT-2 runs; plot one scan or study at a time")
    if overlay and not (first / "scan.json").exists():
        raise FocuslabError("--overlay goes with a scan directory (the toy map to draw runs on)")
    if (first / "mnist.json").exists():
        from focuslab.plot.mnist import plot_mnist
        result = plot_mnist(first, out, fmts)
        if (first / "diagnostics.parquet").exists():
            from focuslab.plot.diagnostics import plot_mnist_diagnostics
            files, lines = plot_mnist_diagnostics(first, Path(out or first), fmts)
            result["files"] += files
            result["summary"] += lines
    elif (first / "gpt2.json").exists():
        from focuslab.plot.gpt2 import plot_runs
        result = plot_runs(list(results_dir), out, fmts)
        with_diag = [d for d in results_dir if (d / "diagnostics.parquet").exists()]
        if with_diag:
            from focuslab.plot.diagnostics import plot_gpt2_diagnostics
            result["files"] += plot_gpt2_diagnostics(with_diag, Path(out or first), fmts)
    else:
        result = plot_scan(first, out, fmts, significance, overlay)
    if not quiet:
        for line in result["summary"]:
            click.echo(line)
        click.echo(f"wrote {len(result['files'])} files to {Path(out or first)}")
