"""``focuslab plot``: figures from results directories (never re-runs a simulation)."""
from __future__ import annotations

from pathlib import Path

import click

from focuslab.plot import PlotSettings

from .options import generated, with_defaults


@click.command(short_help="phase diagrams and figures from results directories")
@click.argument("results_dir", type=click.Path(path_type=Path), nargs=-1, required=True)
@generated(PlotSettings)
def plot(results_dir, **values):
    """Draw the figures of results: phase diagrams of a `focuslab scan` (and its refined map),
    Fig. 2c/2d of a `focuslab mnist` study, validation curves of one or several `focuslab gpt2`
    runs, and the diagnostics of any of them."""
    from focuslab.plot import plot_results

    v = with_defaults(values, PlotSettings)
    result = plot_results(results_dir, v["out"], v["format"], v["significance"], v["overlay"])
    if not v["quiet"]:
        for line in result["summary"]:
            click.echo(line)
        click.echo(f"wrote {len(result['files'])} files to {result['out']}")
