"""``focuslab mnist``: the MNIST batch-size study (paper Fig. 2c/2d).  Flags from
focuslab.mnist.study.MnistSettings, focuslab.options.Common and MnistRun; the library resolves the
job (config, results directory) and runs it."""
from __future__ import annotations

import click

from focuslab.config import load_toml
from focuslab.mnist.study import PRESET, MnistRun, MnistSettings
from focuslab.options import Common

from .common import say
from .options import generated, study_inputs


@click.command(short_help="the MNIST batch-size study (paper Fig. 2c/2d)")
@generated(Common, MnistSettings, MnistRun, defaults={**load_toml(PRESET, "mnist"), "config": PRESET})
def mnist(**values):
    """Train the paper's MLP for every optimizer x batch size x lr x replicate (all lrs and replicates
    of a unit as one batched model) and tabulate the best test loss per optimizer and batch size.
    Re-running the same command resumes; a finished study is left as it is."""
    from focuslab.mnist.study import mnist_job

    run, flags = study_inputs(values, MnistSettings, MnistRun)
    quiet = run.pop("quiet", False)
    job = mnist_job(flags, **run)  # results/mnist-fig2cd for the preset as it is, else results/mnist-DIGEST
    if job.run.dry_run:  # the run's own checks, then the plan; nothing is written
        click.echo(job.describe())
        return
    say(f"focuslab mnist: results in {job.out}", quiet)
    info = job.execute(progress=not quiet)
    say(summary_line(job.out, info), quiet)


def summary_line(out, info) -> str:
    if info.get("already_complete"):
        return f"{out}: this study is already complete ({info['units_total']} units); nothing to do " \
               f"(`focuslab plot {out}` draws it)"
    cost = info.get("diagnostics_cost_fraction")
    return (f"{out}: runs.parquet, best.parquet, mnist.json{', diagnostics.parquet' if cost is not None else ''} "
            f"({info['units_computed']}/{info['units_total']} units computed in {info['wall_seconds']:.1f} s on "
            f"{info['device']}" + (f"; diagnostics cost {100 * cost:.0f}% of training time" if cost is not None else "")
            + ")")
