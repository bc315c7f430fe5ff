"""``focuslab refine``: decide every cell of a scan (winner, tied, undecided, diverged).  Flags from
focuslab.refine.RefineParams (the decisions), RefineRun and focuslab.options.Common (--jobs, --quiet)."""
from __future__ import annotations

from pathlib import Path

import click

from focuslab.options import Common
from focuslab.refine import RefineParams, RefineRun

from .common import say
from .options import generated, given, split, with_defaults

#: Common's run options that refine has no use for: RESULTS_DIR is where it reads and writes, the
#: scan it refines fixes the config, and its simulations run where the scan's did.
NOT_COMMON = ("config", "out", "device", "force")


@click.command(short_help="decide every cell of a scan: winner, tied within a margin, undecided")
@click.argument("results_dir", type=click.Path(path_type=Path))
@generated(RefineParams, RefineRun)
@generated(Common, skip=NOT_COMMON)
def refine(results_dir, **values):
    """Turn the scan in RESULTS_DIR into a decisive phase map: each optimizer at its best lr (raced
    on selection replicates, judged on disjoint estimation replicates), a winner only when it beats
    every other optimizer by more than the margin, ties within it, false discovery rate controlled
    over the map.  Writes decisions.parquet, refine/lrs.parquet and replicates.parquet beside the
    scan; `focuslab plot` draws them."""
    from focuslab.errors import FocuslabError
    from focuslab.refine import run_refine
    from focuslab.scan import parse_shard

    values = given(values)
    run = with_defaults({**split(values, RefineRun), **split(values, Common)}, RefineRun)
    jobs, quiet = run.get("jobs"), run.get("quiet", False)
    if jobs is not None and jobs < 1:
        raise FocuslabError(f"--jobs: must be >= 1, got {jobs}")
    params = RefineParams(**split(values, RefineParams)).validate()
    shard_kn = parse_shard(run["shard"]) if run["shard"] else None
    say(f"focuslab refine: refining the scan in {results_dir}", quiet)
    info = run_refine(results_dir, params, jobs=jobs, progress=not quiet, shard=shard_kn, force=run["force"])
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
