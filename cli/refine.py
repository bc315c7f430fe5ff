"""``focuslab refine``: decide every cell of a scan (winner, tied, undecided, diverged)."""
from __future__ import annotations

from pathlib import Path

import click

from .common import say


@click.command(short_help="decide every cell of a scan: winner, tied within a margin, undecided")
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option("--max-replicates", type=int, default=None, metavar="N",
              help="fresh replicates per cell at most [32 x the first look].")
@click.option("--initial-replicates", type=int, default=None, metavar="N",
              help="fresh replicates of the first look [the scan's replicates, at least 20]; later looks double.")
@click.option("--equivalence", type=float, default=0.01, show_default=True, metavar="EPS",
              help="tie margin, relative to |best loss|: optimizers closer than this are 'tied within EPS'.")
@click.option("--fdr", type=float, default=0.05, show_default=True, metavar="Q",
              help="false discovery rate over the map's cells (Benjamini-Hochberg).")
@click.option("--jobs", "-j", type=int, default=None, help="worker processes [all cores].")
@click.option("--shard", metavar="K/N", help="refine only chunk K of N of the cells (the shards share RESULTS_DIR; "
              "a final run without --shard writes the decisions).")
@click.option("--force", is_flag=True, help="start over when RESULTS_DIR was refined with other settings.")
@click.option("--quiet", "-q", is_flag=True)
def refine(results_dir, max_replicates, initial_replicates, equivalence, fdr, jobs, shard, force, quiet):
    """Turn the scan in RESULTS_DIR into a decisive phase map: each optimizer judged at the lr chosen
    on the scan's replicates, on fresh replicates added where the decision is still open, paired
    comparisons, ties within a margin, false discovery rate controlled over the map.  Writes
    decisions.parquet and replicates.parquet beside the scan; `focuslab plot` draws them."""
    from focuslab.errors import FocuslabError
    from focuslab.refine import RefineParams, run_refine
    from focuslab.scan import parse_shard

    if jobs is not None and jobs < 1:
        raise FocuslabError(f"--jobs: must be >= 1, got {jobs}")
    for name, value in (("--max-replicates", max_replicates), ("--initial-replicates", initial_replicates)):
        if value is not None and value < 2:
            raise FocuslabError(f"{name}: must be >= 2, got {value}")
    params = RefineParams(fdr=fdr, equivalence=equivalence, initial=initial_replicates or 0,
                          max_replicates=max_replicates or 0).validate()
    shard_kn = parse_shard(shard) if shard else None
    say(f"focuslab refine: refining the scan in {results_dir}", quiet)
    info = run_refine(results_dir, params, jobs=jobs, progress=not quiet, shard=shard_kn, force=force)
    if info.get("already_complete"):
        say(f"{results_dir}: already refined with these settings; nothing to do (`focuslab plot {results_dir}`)", quiet)
        return
    if shard_kn:
        say(f"{results_dir}: shard {shard_kn[0]}/{shard_kn[1]} refined ({info['steps_computed']:.3g} steps in "
            f"{info['wall_seconds']:.1f} s); run `focuslab refine {results_dir}` once all shards are done", quiet)
        return
    f = info["fractions"]
    say(f"{results_dir}: decisions.parquet, replicates.parquet ({info['cells']} cells: winner {100 * f['winner']:.1f}%, "
        f"tied {100 * f['tied']:.1f}%, undecided {100 * f['undecided']:.1f}%, diverged {100 * f['diverged']:.1f}%; "
        f"{info['steps_computed']:.3g} steps in {info['wall_seconds']:.1f} s; looks at {info['looks']} replicates)", quiet)
