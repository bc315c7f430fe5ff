"""``focuslab refine``: decide every cell of a scan (winner, tied, undecided, diverged)."""
from __future__ import annotations

from pathlib import Path

import click

from .common import say

_TYPES = {"int": int, "float": float}


def _param_options(fn):
    """One flag per RefineParams field (focuslab.refine holds their defaults and help)."""
    from focuslab.refine import FLAG_FIELDS

    for f in reversed(FLAG_FIELDS):
        kind = _TYPES.get(f.type, f.type) if isinstance(f.type, str) else f.type
        fn = click.option("--" + f.name.replace("_", "-"), f.name, type=kind, default=f.default, show_default=True,
                          metavar=f.metadata.get("metavar"), help=f.metadata["help"] + ".")(fn)
    return fn


@click.command(short_help="decide every cell of a scan: winner, tied within a margin, undecided")
@click.argument("results_dir", type=click.Path(path_type=Path))
@_param_options
@click.option("--jobs", "-j", type=int, default=None, help="worker processes [all cores].")
@click.option("--shard", metavar="K/N", help="refine only chunk K of N of the cells (the shards share RESULTS_DIR; "
              "a final run without --shard writes the decisions).")
@click.option("--force", is_flag=True, help="start over when RESULTS_DIR was refined with other settings.")
@click.option("--quiet", "-q", is_flag=True)
def refine(results_dir, jobs, shard, force, quiet, **settings):
    """Turn the scan in RESULTS_DIR into a decisive phase map: each optimizer at its best lr (raced
    on selection replicates, judged on disjoint estimation replicates), a winner only when it beats
    every other optimizer by more than the margin, ties within it, false discovery rate controlled
    over the map.  Writes decisions.parquet, refine/lrs.parquet and replicates.parquet beside the
    scan; `focuslab plot` draws them."""
    from focuslab.errors import FocuslabError
    from focuslab.refine import RefineParams, run_refine
    from focuslab.scan import parse_shard

    if jobs is not None and jobs < 1:
        raise FocuslabError(f"--jobs: must be >= 1, got {jobs}")
    params = RefineParams(**settings).validate()
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
        f"{info['steps_computed']:.3g} steps in {info['wall_seconds']:.1f} s; looks at {info['looks']} "
        f"estimation replicates)", quiet)
