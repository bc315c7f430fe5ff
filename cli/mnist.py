"""``focuslab mnist``: the MNIST batch-size study (paper Fig. 2c/2d).  Flags from
focuslab.mnist.study.MnistSettings, focuslab.options.Common and MnistRun."""
from __future__ import annotations

from pathlib import Path

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
    from focuslab.mnist.study import build_mnist_config, run_study
    from focuslab.results import default_out

    run, flags, file_values = study_inputs(values, MnistSettings, MnistRun, "mnist")
    config_file = run.get("config")
    config = build_mnist_config(file_values, flags)
    out = run.get("out")
    if out is None:  # results/mnist-fig2cd for the preset as it is, else results/mnist-DIGEST
        preset = Path(config_file).stem if config_file else PRESET
        out = default_out(preset, config.digest(), build_mnist_config(file_values).digest(), adhoc="mnist")
    quiet = run.get("quiet", False)
    if run.get("dry_run"):  # the run's own checks, then the plan; nothing is written
        from focuslab.mnist.study import describe_study

        click.echo(describe_study(config, out, jobs=run.get("jobs"), device=run.get("device", "auto"),
                                  data_dir=Path(run["data_dir"]) if run.get("data_dir") else None,
                                  force=run.get("force", False)))
        return
    say(f"focuslab mnist: results in {out}", quiet)
    data_dir = Path(run["data_dir"]) if run.get("data_dir") else None
    info = run_study(config, out, jobs=run.get("jobs"), device=run.get("device", "auto"), data_dir=data_dir,
                     force=run.get("force", False), progress=not quiet)
    say(summary_line(out, info), quiet)


def summary_line(out, info) -> str:
    if info.get("already_complete"):
        return f"{out}: this study is already complete ({info['units_total']} units); nothing to do " \
               f"(`focuslab plot {out}` draws it)"
    cost = info.get("diagnostics_cost_fraction")
    return (f"{out}: runs.parquet, best.parquet, mnist.json{', diagnostics.parquet' if cost is not None else ''} "
            f"({info['units_computed']}/{info['units_total']} units computed in {info['wall_seconds']:.1f} s on "
            f"{info['device']}" + (f"; diagnostics cost {100 * cost:.0f}% of training time" if cost is not None else "")
            + ")")
