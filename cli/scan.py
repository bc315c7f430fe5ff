"""``focuslab scan``: parse options, build a frozen config, run the scan, say where results went."""
from __future__ import annotations

from pathlib import Path

import click

AXIS_HELP = "grid: START:STOP:NUM, START:STOP:NUM:log, a comma list, or one value"


@click.command()
@click.option("--config", "config_file", metavar="FILE|PRESET",
              help="TOML file or preset name (default, fig2a, fig2a-quick, fig2b, fig2b-quick); "
                   "flags override it.")
@click.option("--sharpness", metavar="GRID", help=f"valley sharpness a; {AXIS_HELP}.")
@click.option("--noise", metavar="GRID", help=f"gradient noise std sigma; {AXIS_HELP}.")
@click.option("--weight-decay", metavar="GRID", help=f"weight decay omega; {AXIS_HELP}.")
@click.option("--lr", metavar="GRID", help=f"learning rates (best one is kept); {AXIS_HELP}.")
@click.option("--theta", metavar="GRID", help=f"valley angle phi (may use pi); {AXIS_HELP}.")
@click.option("--c", "c", metavar="GRID", help=f"slope along the valley; {AXIS_HELP}.")
@click.option("--optimizers", metavar="LIST", help="comma list of adam, signum, focus, sgd, lion.")
@click.option("--opt-param", "opt_param", multiple=True, metavar="OPT.NAME=VALUE",
              help="optimizer hyperparameter, e.g. focus.gamma=0.4 (repeatable).")
@click.option("--replicates", type=int, help="trajectories per (cell, optimizer, lr).")
@click.option("--steps", type=int, help="optimizer steps per trajectory.")
@click.option("--seed", type=int, help="base seed of all random streams.")
@click.option("--chunk-steps", type=int, help="work per resumable chunk (fixes the chunk layout).")
@click.option("--jobs", "-j", type=int, default=None, help="worker processes [all cores].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="output directory [results/<config name>].")
@click.option("--force", is_flag=True, help="replace a scan with a different config in --out.")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar or summary.")
def scan(config_file, sharpness, noise, weight_decay, lr, theta, c, optimizers, opt_param,
         replicates, steps, seed, chunk_steps, jobs, out, force, quiet):
    """Scan the narrowing-valley toy model over a grid; write runs/best tables and scan.json.

    Without options it runs the `default` preset: a quick Fig. 2a-style sharpness x noise phase
    diagram.  Re-running the same command resumes an interrupted scan.
    """
    from focuslab.config import build_scan_config, load_toml, parse_opt_param
    from focuslab.errors import FocuslabError
    from focuslab.scan import run_scan

    if jobs is not None and jobs < 1:
        raise FocuslabError(f"--jobs: must be >= 1, got {jobs}")
    file_values = load_toml(config_file, "scan") if config_file else None
    flags = {"sharpness": sharpness, "noise": noise, "weight_decay": weight_decay, "lr": lr,
             "theta": theta, "c": c, "optimizers": optimizers, "replicates": replicates,
             "steps": steps, "seed": seed, "chunk_steps": chunk_steps,
             "optimizer": parse_opt_param(opt_param)}
    config = build_scan_config(file_values, {k: v for k, v in flags.items() if v is not None})
    if out is None:
        out = Path("results") / (Path(config_file).stem if config_file else "default")
    summary = run_scan(config, out, jobs=jobs, force=force, progress=not quiet)
    if not quiet:
        done = summary["chunks_computed"]
        speed = summary["ns_per_step_per_worker"]
        click.echo(f"{out}: runs.parquet, best.parquet, scan.json "
                   f"({config.n_cells} cells x {len(config.optimizers)} optimizers x "
                   f"{len(config.axes['lr'])} lrs x {config.replicates} replicates; "
                   f"{done}/{summary['chunks_total']} chunks computed in "
                   f"{summary['wall_seconds']:.1f} s"
                   + (f", {speed:.1f} ns/step per worker)" if speed else ")"))
