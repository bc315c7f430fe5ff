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
    from focuslab.refine import describe_plan, plan_refine, run_refine, summary_line

    values = given(values)
    run = RefineRun(**with_defaults(split(values, RefineRun), RefineRun))
    common = split(values, Common)
    params = RefineParams(**split(values, RefineParams))
    jobs, quiet = common.get("jobs"), common.get("quiet", False)
    if run.dry_run:
        click.echo(describe_plan(plan_refine(results_dir, params, run, jobs=jobs)))
        return
    info = run_refine(results_dir, params, run=run, jobs=jobs, progress=not quiet,
                      announce=lambda line: say(line, quiet))
    say(summary_line(results_dir, info), quiet)
